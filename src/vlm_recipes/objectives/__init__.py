"""Training objectives. Each is a module here exposing `OBJECTIVE`, an `Objective` instance.

An objective says what data a recipe trains on, how a batch is built, what the loss is and
how the result is evaluated; the training loop itself (`training.trainer`) is shared.
"""

from __future__ import annotations

import importlib

from ..errors import InputError
from .base import Objective

OBJECTIVES = ("sft", "mrl", "mdlm")


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise InputError(f"unknown objective.name {name!r}: choose one of {', '.join(OBJECTIVES)}")
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"{__name__}.{name}":
            raise InputError(f"objective {name!r} is not implemented in this version") from None
        raise
    return module.OBJECTIVE
