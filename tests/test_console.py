"""The `vlm-recipes` command, the script aliases, and the package metadata that installs them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from vlm_recipes.cli.main import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["train", "list", "compare", "report", "encode", "predict", "evaluate", "export", "benchmark", "build-base"]
# the console script that `pip install -e .` put next to this interpreter, else the module
SCRIPT = Path(sys.executable).with_name("vlm-recipes")
COMMAND = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "vlm_recipes.cli.main"]


def _run(*args: str, command=COMMAND) -> subprocess.CompletedProcess:
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.mark.parametrize("command", [COMMAND, [sys.executable, "-m", "vlm_recipes"]], ids=["console", "module"])
def test_help_lists_every_subcommand(command):
    result = _run("--help", command=command)
    assert result.returncode == 0, result.stderr
    listed = re.findall(r"^  (\S+) ", result.stdout, flags=re.MULTILINE)
    assert listed == SUBCOMMANDS


def test_help_does_not_import_torch():
    code = "import sys; from vlm_recipes.cli.main import main; main(['--help']); assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


@pytest.mark.parametrize("args, needle", [([], "missing SUBCOMMAND"), (["bogus"], "unknown subcommand 'bogus'")])
def test_bad_subcommand_is_one_line_and_exit_2(args, needle):
    result = _run(*args)
    err = result.stderr.strip().splitlines()
    assert result.returncode == 2
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


def test_subcommand_without_module_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setitem(COMMANDS, "later", ("vlm_recipes.cli.no_such_module", [], "not written yet"))
    assert main(["later"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vlm_recipes.cli.no_such_module" in err[0]


def test_list_prints_the_recipes():
    from vlm_recipes.config import available_recipes

    result = _run("list")
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] == list(available_recipes())


@pytest.mark.parametrize("script", ["train_recipe", "encode", "compare_runs", "build_base_model"])
def test_script_aliases_run_from_the_installed_package(script):
    result = _run("--help", command=[sys.executable, str(ROOT / "scripts" / f"{script}.py")])
    assert result.returncode == 0 and result.stdout.startswith("usage: "), result.stderr


def test_no_file_patches_sys_path():
    files = [ROOT / "main_pipeline.py", ROOT / "main_pipeline.ipynb"]
    for folder in ("scripts", "notebooks", "src", "tests"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".ipynb")]
    patched = [str(p.relative_to(ROOT)) for p in files if re.search(r"sys\.path\.(insert|append)", p.read_text())]
    assert not patched, "import the installed package (`pip install -e .`) instead"


def test_every_pin_is_declared_and_within_its_range():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    declared += [Requirement(r) for group in project["optional-dependencies"].values() for r in group]
    ranges = {r.name.lower(): r.specifier for r in declared}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pin = Requirement(line)
            version = next(iter(pin.specifier)).version
            assert pin.name.lower() in ranges, f"{pin.name} is pinned in requirements.txt but not in pyproject.toml"
            assert ranges[pin.name.lower()].contains(version), f"{line} is outside pyproject's {ranges[pin.name.lower()]}"
