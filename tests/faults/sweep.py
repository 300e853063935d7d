"""Kill a recipe run at chosen moments, resume it, and compare it with a run that was never stopped
(issue 31). Used by tests/test_faults.py (the suite's share) and scripts/fault_sweep.py (the long sweep).

A kill point is (event, n) of tests/faults/inject.py: the nth call of that library function in the
stopped process. They are drawn, seeded, from the events of the uninterrupted run, so that every
phase is hit: data loading, the base evaluation, mid-step, inside a checkpoint write, between
stages, the final evaluation and the final save.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from .inject import read_events

ROOT = Path(__file__).resolve().parents[2]
TIMING = ("train_seconds", "step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second")
"""Wall-clock figures (metrics.json's stage times, TRL's and Trainer's logged times): never compared."""


class Zygote:
    """tests/faults/zygote.py: forks one real process per training command."""

    def __init__(self, logs: Path, src: Path = ROOT / "src"):
        self.logs = logs
        # src/ (the checkout under test) and tests/ (faults.inject) for the zygote's imports
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "faults" / "zygote.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}
        self.count = 0

    def run(self, argv: list[str], fault: str | None = None, events_to: Path | None = None) -> tuple[int, str]:
        """(exit code, negative for a signal; the process's output)."""
        self.count += 1
        log = self.logs / f"run-{self.count}.log"
        request = {"argv": [str(a) for a in argv], "log": str(log), "fault": fault,
                   "events_to": str(events_to) if events_to else None}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        code = json.loads(self.proc.stdout.readline())["returncode"]
        return code, log.read_text() if log.exists() else ""

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@dataclass
class Outcome:
    tried: int = 0
    landed: list[str] = field(default_factory=list)
    """Where each kill that happened landed ("checkpoint write", "mid-step", ...)."""
    runs_compared: int = 0
    failures: list[str] = field(default_factory=list)

    def line(self, recipe: str) -> str:
        inside = self.landed.count("checkpoint write")
        return (f"{recipe}: {self.tried} kill points tried, {len(self.landed)} killed ({inside} inside a checkpoint "
                f"write), {self.runs_compared - len(self.failures)} of {self.runs_compared} resumed runs bit-exact")


def landed(events: list[dict]) -> str:
    """The phase a process died in, from its last recorded call."""
    if not events:
        return "startup"
    last = events[-1]
    name = last["event"]
    if last["in_checkpoint"]:
        return "checkpoint write"
    return {"load": "data loading", "backward": "mid-step", "generate": "evaluation or sampling", "write": "stage save",
            "replace:progress.json": "between stages", "replace:base_eval.json": "after base evaluation",
            "replace:checkpoint_complete.json": "checkpoint marked"}.get(name, f"after {name.split(':')[-1]}")


def kill_points(events: list[dict], count: int, in_checkpoint: int, seed: int = 0) -> list[str]:
    """`count` "event:n" kill points of a fresh run, seeded: one per phase (data loading, base
    evaluation, between stages, final evaluation, final save, after metrics.json), `in_checkpoint`
    inside checkpoint writes, the rest mid-step or at any other call."""
    rng = random.Random(seed)
    backward = [i for i, e in enumerate(events) if e["event"] == "backward"]
    first, last = backward[0], backward[-1]
    phases = [
        [i for i, e in enumerate(events) if e["event"] == "load"],
        [i for i, e in enumerate(events[:first]) if e["event"] == "generate"],
        [i for i, e in enumerate(events) if e["event"] == "replace:progress.json"][:-1],  # between stages
        [i for i, e in enumerate(events) if i > last and e["event"] == "generate"],
        [i for i, e in enumerate(events) if i > last and e["event"] == "write" and not e["in_checkpoint"]],
        [i for i, e in enumerate(events) if e["event"] == "replace:metrics.json"],
    ]
    writes = [i for i, e in enumerate(events) if e["event"] == "write" and e["in_checkpoint"]]
    chosen = rng.sample(writes, min(in_checkpoint, len(writes)))
    chosen += [rng.choice(p) for p in phases if p and not set(p) & set(chosen)]
    rest = [i for i in range(len(events)) if i not in chosen]
    mid_step = [i for i in backward if i not in chosen]
    while len(chosen) < count and rest:
        pool = mid_step if mid_step and len(chosen) % 2 == 0 else rest
        i = pool.pop(rng.randrange(len(pool)))
        for other in (rest, mid_step):
            if i in other:
                other.remove(i)
        chosen.append(i)
    return [f"{events[i]['event']}:{events[i]['n']}" for i in sorted(chosen[:count])]


FOLLOW_UPS = ["write:2", "backward:1", "write:4", "generate:1", "write:7", "replace:progress.json:1", "write:3",
              "generate:2", "backward:2", "replace:metrics.json:1", "write:9", "write:1"]
"""Kill points of a resumed process (its own calls, counted from 1), for the chains: each lands
somewhere in whatever the resume has left to do (a checkpoint write, a step, an evaluation, ...)."""


class Runner:
    """Runs of one recipe at test size in `work`, against one uninterrupted reference run."""

    def __init__(self, zygote: Zygote, argv: list[str], work: Path, report=print):
        self.zygote, self.argv, self.work, self.report = zygote, argv, work, report
        self.reference, self.outcome, self.runs = work / "reference", Outcome(), 0
        code, log = zygote.run([*argv, "--output-dir", self.reference], events_to=work / "reference-events.jsonl")
        assert code == 0, log[-3000:]
        self.events = read_events(work / "reference-events.jsonl")

    def attempt(self, argv: list[str], point: str | None) -> tuple[int, str]:
        """One process, killed at `point` (None: none); the kill's landing is recorded."""
        self.runs += 1
        events = self.work / f"events-{self.runs}.jsonl"
        code, log = self.zygote.run(argv, fault=point, events_to=events)
        if point is not None:
            self.outcome.tried += 1
            if code == -9:
                self.outcome.landed.append(landed(read_events(events)))
        return code, log

    def continue_run(self, run_dir: Path, point: str | None) -> tuple[int, str]:
        """`--resume`, or the same command again when the kill came before the run directory was written
        (nothing to resume: as a user would, start again)."""
        if not (run_dir / "config.yaml").is_file():
            return self.attempt([*self.argv, "--output-dir", run_dir], point)
        return self.attempt(["--resume", run_dir, "--no-wandb"], point)

    def chain(self, name: str, points: list[str]) -> None:
        """A fresh run killed at points[0], its resume killed at points[1] (counted in that process), and
        so on; then resumed until complete and compared with the reference. A point a process never
        reaches (it completed first) ends the chain there."""
        run_dir = self.work / name
        code, log = self.attempt([*self.argv, "--output-dir", run_dir], points[0])
        for point in points[1:]:
            if code != -9 or complete(run_dir):
                break
            code, log = self.continue_run(run_dir, point)
        if code == -9 and not complete(run_dir):
            code, log = self.continue_run(run_dir, None)
        elif code == -9:  # killed after status.json said "complete": the run is finished, nothing to resume
            code = 0
        self.compare(name, run_dir, code, log, points)

    def compare(self, name: str, run_dir: Path, code: int, log: str, points: list[str]) -> None:
        self.outcome.runs_compared += 1
        difference = differs(run_dir, self.reference) if code == 0 else f"exit {code}: {log[-2000:]}"
        if difference:
            self.outcome.failures.append(f"{name} (killed at {', '.join(points)}): {difference}")
        self.report(f"{name:12s} {' > '.join(points):70s} {'FAILED' if difference else 'exact'}")


def chains(runner: Runner, count: int, kills_per_chain: int, in_checkpoint: int, seed: int = 0) -> Outcome:
    """`count` chains: their first kills are `kill_points` of a fresh run, each followed by
    `kills_per_chain - 1` kills of the resumed processes (FOLLOW_UPS, seeded)."""
    rng = random.Random(seed)
    firsts = kill_points(runner.events, count, in_checkpoint, seed)
    for number, first in enumerate(firsts):
        runner.chain(f"chain-{number}", [first, *rng.sample(FOLLOW_UPS, kills_per_chain - 1)])
    return runner.outcome


def independent(runner: Runner, count: int, in_checkpoint: int, seed: int = 0) -> Outcome:
    """`count` kill points of a fresh run, each resumed (not killed again) and compared on its own."""
    for number, point in enumerate(kill_points(runner.events, count, in_checkpoint, seed)):
        runner.chain(f"point-{number}", [point])
    return runner.outcome


def complete(run_dir: Path) -> bool:
    status = run_dir / "status.json"
    return status.is_file() and json.loads(status.read_text()).get("state") == "complete"


def differs(run: Path, reference: Path) -> str | None:
    """What differs between two finished runs (None: nothing): metrics.json minus timings, every
    logged loss, the final weights bit for bit."""
    status = json.loads((run / "status.json").read_text())
    if status != {"state": "complete"}:
        return f"status {status}"
    a, b = (without_timing(json.loads((d / "metrics.json").read_text())) for d in (run, reference))
    if a != b:
        return f"metrics.json differs: {a} vs {b}"
    logs = [[without_timing(e) for e in json.loads((d / "train_log.json").read_text()) if "loss" in e]
            for d in (run, reference)]
    if logs[0] != logs[1]:
        return f"losses differ: {logs[0]} vs {logs[1]}"
    wa, wb = weights(run), weights(reference)
    if wa.keys() != wb.keys() or not all(torch.equal(wa[k], wb[k]) for k in wa):
        return "final weights differ"
    return None


def without_timing(tree):
    if isinstance(tree, dict):
        return {k: without_timing(v) for k, v in tree.items() if k not in TIMING}
    if isinstance(tree, list):
        return [without_timing(v) for v in tree]
    return tree


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted((run_dir / "model").glob("*.safetensors")) for k, v in load_file(f).items()}
