"""Validation during training (issue 19): the split, the metric, best checkpoint, early stopping.

The Trainer wiring (RecipeTrainer.evaluate, EvaluateAtStageEnd, EarlyStoppingCallback, load best)
is tested on a 4-weight model with a scripted evaluator, in seconds; one tiny recipe run through
the real CLI checks the run directory's outputs.
"""

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from vlm_recipes.cli.train import main
from vlm_recipes.config import DataConfig, FreezeConfig, StageConfig, TrainConfig, load_recipe
from vlm_recipes.data.splits import carve_validation, load_splits
from vlm_recipes.errors import InputError
from vlm_recipes.evaluation.result import EvalResult, pick_metric
from vlm_recipes.objectives.base import Objective
from vlm_recipes.training.trainer import Validation, train_stage


def _digest(sample) -> str:
    return hashlib.sha1(sample.image.tobytes()).hexdigest()


def test_validation_is_carved_from_train_and_never_from_test():
    splits = load_splits(DataConfig(num_train=20, num_test=4, num_val=64), "detection", seed=3)
    train, val, test = ({_digest(s) for s in splits[k]} for k in ("train", "val", "test"))
    assert len(splits["val"]) == 2  # at most a tenth of the 20 training rows
    assert len(splits["train"]) == 18 and not train & val and not val & test
    again = load_splits(DataConfig(num_train=20, num_test=4, num_val=0), "detection", seed=3)
    assert train | val == {_digest(s) for s in again["train"]} and again["val"] == []


def test_carving_is_seeded_and_keeps_train_order():
    splits = {"train": list(range(100)), "test": ["t"]}
    a, b = carve_validation(splits, 5, seed=1), carve_validation(splits, 5, seed=1)
    assert a == b and len(a["val"]) == 5 and a["test"] == ["t"]
    assert a["train"] == sorted(a["train"]) and sorted(a["train"] + a["val"]) == list(range(100))


def test_metric_names_and_full_dim():
    metrics = {"t2i": {"16": {"recall@1": 0.2}, "128": {"recall@1": 0.5}}}
    assert pick_metric(metrics, "t2i.recall@1") == 0.5  # the full (largest) dim
    assert pick_metric(metrics, "t2i.16.recall@1") == 0.2
    with pytest.raises(KeyError):
        pick_metric(metrics, "i2t.recall@1")
    assert load_recipe("mrl").metric_for_best(load_recipe("mrl").stages[0].train) == "t2i.recall@1"
    assert load_recipe("r4-joint").metric_for_best(load_recipe("r4-joint").stages[0].train) == "mean_iou"
    with pytest.raises(InputError, match="need a validation split"):
        load_recipe("r2-vision-only", ["data.num_val=0", "train.load_best_at_end=true"])


@pytest.mark.parametrize("recipe, metric", [("r4-joint", "t2i.recall@1"), ("mrl", "mean_iou"),
                                            ("r3-two-stage", "mean_iuo")])
def test_bad_metric_for_best_is_one_line_and_exit_2(capsys, tmp_path, recipe, metric):
    code = main(["--recipe", recipe, "--set", f"train.metric_for_best={metric}", "--output-dir", str(tmp_path / "r"),
                 "--no-wandb"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"metric_for_best={metric!r} is not a metric" in err[0], err
    assert not (tmp_path / "r").exists()


# --- the Trainer wiring, on a tiny model ---------------------------------------------------------

class Quadratic(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(4))


class SquareLoss(Objective):
    """The smallest objective: loss = mean(w^2 * x) on batches of ones (no recipe: the base class's
    trainer plumbing only reads what is defined here)."""

    def __init__(self):
        pass

    compute_loss_func = None  # the loss is compute_loss's, not Trainer's from labels

    def collate(self, samples):
        return {"x": torch.ones(len(samples), 4)}

    def prepare_trainer(self, trainer):
        pass

    def training_step(self, trainer, model, inputs, num_items_in_batch=None):
        return None

    def compute_loss(self, model, inputs, num_items_in_batch=None):
        return (model.w ** 2 * inputs["x"]).mean()


class Scripted:
    """An evaluator whose score is scripted per call; it keeps the weights it scored."""

    def __init__(self, scores):
        self.scores, self.seen = list(scores), []

    def evaluate(self, model, samples, desc):
        self.seen.append(model.w.detach().clone())
        return EvalResult({"mean_iou": self.scores[len(self.seen) - 1], "n": len(samples)})


def _train(tmp_path, scores, **train):
    settings = dict(learning_rate=0.1, max_steps=12, per_device_train_batch_size=2, warmup_ratio=0.0, eval_steps=2,
                    logging_steps=1)
    stage = StageConfig(freeze=FreezeConfig(llm=False), train=TrainConfig(**{**settings, **train}))
    model, evaluator = Quadratic(), Scripted(scores)
    log = train_stage(model, stage, SquareLoss(), list(range(8)), tmp_path, seed=0, bf16=False, use_cpu=True,
                      report_to=[], validation=Validation(evaluator, [0, 1], "mean_iou"))
    return model, evaluator, log


def test_early_stopping_stops(tmp_path):
    model, evaluator, log = _train(tmp_path, [0.1, 0.5, 0.3, 0.2, 0.1, 0.0], early_stopping_patience=2)
    steps = [e["step"] for e in log if "eval_mean_iou" in e]
    assert steps == [2, 4, 6, 8]  # two evaluations without a gain after step 4, of 6 planned
    assert max(e["step"] for e in log) == 8


def test_best_checkpoint_is_the_one_reloaded(tmp_path):
    model, evaluator, log = _train(tmp_path, [0.1, 0.2, 0.6, 0.3, 0.2, 0.1], load_best_at_end=True)
    assert [e["step"] for e in log if "eval_mean_iou" in e] == [2, 4, 6, 8, 10, 12]  # the last step too
    saved = load_file(tmp_path / "checkpoint-6" / "model.safetensors")["w"]
    assert torch.equal(model.w.detach(), saved) and torch.equal(saved, evaluator.seen[2])
    assert not torch.equal(model.w.detach(), evaluator.seen[-1])  # training went on past it


def test_evaluates_at_stage_end(tmp_path):
    model, evaluator, log = _train(tmp_path, [0.0] * 6, eval_steps=5)
    assert [e["step"] for e in log if "eval_mean_iou" in e] == [5, 10, 12]
    assert torch.equal(model.w.detach(), evaluator.seen[-1])
    # without load_best_at_end, evaluations save nothing: the one checkpoint is D19's, at the stage's end
    assert [p.name for p in tmp_path.glob("checkpoint-*")] == ["checkpoint-12"]


# --- one tiny run through the CLI -----------------------------------------------------------------

def test_run_writes_history_best_and_curve(short_r4_run):
    """The session's short r4-joint run (tests/conftest.py): 6 steps, validated every 3 on its one
    carved row."""
    run_dir = short_r4_run
    history = json.loads((run_dir / "eval_history.json").read_text())
    assert [(r["stage"], r["step"]) for r in history] == [("joint-lora", 3), ("joint-lora", 6)]
    assert history[0]["metrics"]["n"] == 1  # a tenth of the 16 training rows
    best = json.loads((run_dir / "metrics.json").read_text())["best"]
    assert best["stage"] == "joint-lora" and best["metric"] == "mean_iou" and best["step"] in (3, 6)
    assert best["value"] == max(r["metrics"]["mean_iou"] for r in history)
    assert (run_dir / "val_curve.png").is_file()
    events = list((run_dir / "trainer" / "joint-lora" / "runs").rglob("events.out.tfevents.*"))
    assert events and b"eval/mean_iou" in b"".join(e.read_bytes() for e in events)  # TensorBoard got it
