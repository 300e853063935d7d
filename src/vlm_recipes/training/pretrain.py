"""Pretraining the tiny base on a generic task, so that it behaves like a pretrained model.

The run uses the same Trainer as the recipes (`train_stage`), with pretraining's own objective
(`objectives.dense_grounding`) on the generic objects of `data.objects`.
"""

from __future__ import annotations

from pathlib import Path

from ..config import FreezeConfig, StageConfig, TrainConfig
from ..data.objects import MAX_PIXELS, MIN_PIXELS, ObjectsDataset
from ..families import Family
from ..models.tiny import build_tiny, save_checkpoint
from ..objectives.dense_grounding import DenseGrounding
from .trainer import train_stage


def pretrain_base(family: Family, out_dir: Path, num_samples: int, epochs: float, learning_rate: float,
                  seed: int = 0, batch_size: int = 16, save_steps: int = 0, aux_weight: float = 1.0,
                  aliases: bool = True) -> list[dict]:
    """Build the tiny model, pretrain it on generic objects, save it with its processor to `out_dir`."""
    model, processor = build_tiny(family, MIN_PIXELS, MAX_PIXELS, seed=seed)
    stage = StageConfig(name="pretrain", freeze=FreezeConfig(vision=False, merger=False, llm=False),
                        train=TrainConfig(learning_rate=learning_rate, num_train_epochs=epochs,
                                          per_device_train_batch_size=batch_size, warmup_ratio=0.03,
                                          logging_steps=25, weight_decay=0.01,
                                          # checkpoints only on request (inspection): a rebuild is
                                          # deterministic and cheap to redo, never resumed
                                          extra={"save_strategy": "steps", "save_steps": save_steps,
                                                 "save_only_model": True} if save_steps
                                          else {"save_strategy": "no"}))
    log = train_stage(model, stage, DenseGrounding(processor, aux_weight),
                      ObjectsDataset(num_samples, family, seed, aliases),
                      out_dir / "_trainer", seed=seed, bf16=False, use_cpu=True, report_to=[])
    save_checkpoint(model, processor, out_dir)
    return log
