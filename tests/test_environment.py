"""requirements.txt, environment.yml and environment.lock.yml must agree on every pin."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)==([^\s;#]+).*", line)
        if match:
            pins[match[1].lower().replace("_", "-")] = match[2]
    return pins


def _conda_pip(path: Path) -> dict[str, str]:
    deps = yaml.safe_load(path.read_text())["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    return _pins(pip)


def test_requirements_are_all_pinned():
    lines = [l for l in (ROOT / "requirements.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert len(_pins(lines)) == len(lines)
    assert _pins(lines)["torch"] == "2.14.1" and _pins(lines)["torchvision"] == "0.29.1"


def test_environment_yml_has_the_same_pins():
    assert _conda_pip(ROOT / "environment.yml") == _pins((ROOT / "requirements.txt").read_text().splitlines())


def test_lock_contains_every_requirement_at_the_same_version():
    lock = _conda_pip(ROOT / "environment.lock.yml")
    required = _pins((ROOT / "requirements.txt").read_text().splitlines())
    mismatched = {name: (version, lock.get(name)) for name, version in required.items() if lock.get(name) != version}
    assert not mismatched
    assert len(lock) > len(required)  # transitive dependencies are locked too
