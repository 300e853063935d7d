"""Fault injection from the test side (issue 31): wraps library functions in the process under test
and, at the Nth call of one of them, kills the process with a real SIGKILL, or fails the call with
ENOSPC. Nothing in src/ knows about it: the wrapped functions are the libraries' own (torch.save,
safetensors' file writer, autograd's backward, transformers' generate, datasets' load_from_disk,
os.replace), so the harness survives any refactor of the run code.

Events (counted from 1 in each process):
  load             datasets.Dataset.load_from_disk (the cached data sets: data loading)
  generate         GenerationMixin.generate (evaluations; GRPO's sampling)
  backward         torch.autograd.backward; the kill comes after it (gradients made, no optimizer step)
  write            torch.save or safetensors' file writer (checkpoints, the stage and final saves);
                   the kill comes before the call, so a checkpoint's earlier files exist and the rest not
  replace:NAME     os.replace onto a file called NAME (the run's JSON files); the kill comes after it

Each call is recorded with whether it ran inside Trainer._save_checkpoint ("in_checkpoint"), so
that a test can choose kill points inside a checkpoint write.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import signal
from pathlib import Path


class Injector:
    def __init__(self, kill_at: tuple[str, int] | None = None, action: str = "kill", events_to: str | None = None):
        self.kill_at, self.action = kill_at, action
        self.counts: dict[str, int] = {}
        self.in_checkpoint = 0
        # every call, in order, one JSON line each, flushed at once: a killed process's last line
        # says where it died
        self.log = open(events_to, "a") if events_to else None

    def hit(self, event: str, when: str) -> None:
        """Count `event` once ("before" its call), and fire when this is the chosen call and `when` fits."""
        if when == "before":
            self.counts[event] = self.counts.get(event, 0) + 1
            if self.log:
                self.log.write(json.dumps({"event": event, "n": self.counts[event],
                                           "in_checkpoint": self.in_checkpoint > 0}) + "\n")
                self.log.flush()
        if self.kill_at != (event, self.counts.get(event, 0)) or when != _WHEN.get(event.split(":")[0], "before"):
            return
        if self.action == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.kill(os.getpid(), signal.SIGKILL)

    def wrap(self, owner, name: str, event, static: bool = False) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            label = event(*args, **kwargs) if callable(event) else event
            if label is None:
                return original(*args, **kwargs)
            self.hit(label, "before")
            result = original(*args, **kwargs)
            self.hit(label, "after")
            return result

        setattr(owner, name, staticmethod(wrapper) if static else wrapper)

    def install(self) -> None:
        import datasets
        import safetensors.torch
        import torch
        import transformers
        from transformers.generation.utils import GenerationMixin

        self.wrap(datasets.Dataset, "load_from_disk", "load", static=True)
        self.wrap(GenerationMixin, "generate", "generate")
        self.wrap(torch.autograd, "backward", "backward")
        self.wrap(torch, "save", "write")
        self.wrap(safetensors.torch, "serialize_file", "write")
        self.wrap(os, "replace", lambda src, dst, *a, **k: f"replace:{Path(dst).name}")
        original = transformers.Trainer._save_checkpoint

        def save_checkpoint(trainer, *args, **kwargs):
            self.in_checkpoint += 1
            try:
                return original(trainer, *args, **kwargs)
            finally:
                self.in_checkpoint -= 1

        transformers.Trainer._save_checkpoint = save_checkpoint


def read_events(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()] if Path(path).exists() else []


_WHEN = {"backward": "after", "replace": "after"}
"""Where the kill lands relative to the call; every other event: before it."""


def parse(spec: str | None) -> tuple[tuple[str, int] | None, str]:
    """"EVENT:N" or "EVENT:N:enospc" (EVENT may hold one colon: replace:progress.json)."""
    if not spec:
        return None, "kill"
    parts = spec.split(":")
    action = parts.pop() if parts[-1] in ("kill", "enospc") else "kill"
    return (":".join(parts[:-1]), int(parts[-1])), action
