"""A process that imports the run's code once and forks one real child process per training command
(each import of torch + transformers costs ~9 s on 2 cores; a fork costs nothing). A child runs the
real CLI entry point `vlm_recipes.cli.train.main(argv)` with the faults of tests/faults/inject.py
installed, and either exits with the CLI's exit code or is SIGKILLed by its own injected fault.

Protocol, one JSON object a line: in {"argv", "log", "fault", "events_to"}; out {"returncode"}
(negative: killed by that signal, as subprocess reports it). The child is forked before it touches
torch's thread pools (the zygote itself never computes).
"""

import json
import os
import sys
import traceback

import datasets  # noqa: E402,F401  imported before the fork: the children share them
import safetensors.torch  # noqa: E402,F401
import torch  # noqa: E402,F401
import trl  # noqa: E402,F401
from transformers import Trainer  # noqa: E402,F401
from transformers.generation.utils import GenerationMixin  # noqa: E402,F401
from trl import GRPOTrainer  # noqa: E402,F401

from faults.inject import Injector, parse  # noqa: E402
from vlm_recipes.cli.train import main  # noqa: E402


def child(request: dict) -> int:
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    injector = Injector(*parse(request.get("fault")), events_to=request.get("events_to"))
    injector.install()
    sys.argv = ["train_recipe.py", *request["argv"]]
    try:
        code = main(request["argv"])
    except BaseException:
        traceback.print_exc()
        code = 70
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os._exit(child(request))
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"returncode": code}), flush=True)


if __name__ == "__main__":
    print(json.dumps({"ready": True}), flush=True)
    serve()
