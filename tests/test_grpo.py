"""r5-sft-grpo: the GRPO rewards on hand-written answers, the reward-hacking signals, the recipe's
validation, stage objectives, the shifted split, and a short GRPO run whose mean reward rises."""

from __future__ import annotations

import json
import random

import pytest

from vlm_recipes.boxes import is_empty_answer
from vlm_recipes.config import ModelConfig, load_recipe
from vlm_recipes.data.synthetic import MAX_SIDE, SHIFTED_SIDES, make_nutrition_dataset, render_nutrition_example
from vlm_recipes.errors import InputError
from vlm_recipes.evaluation.generation import answer_boxes
from vlm_recipes.families import get_family
from vlm_recipes.models.loading import open_base
from vlm_recipes.objectives import rewards
from vlm_recipes.objectives.grpo import watch, watch_sets

MIN_REWARD_RISE = 0.03
"""Mean reward, last 6 steps minus first 6, of the short run below: measured 0.783 -> 0.893 (+0.11)
on 2 CPU cores, 2026-12-04; the bound leaves room for other machines' sampling paths."""
W, H = 200, 100
TARGET = (20.0, 10.0, 120.0, 60.0)  # qwen3_vl (0-1000 of the image): [100, 100, 600, 600]
LABEL = "nutrition table"


@pytest.fixture(scope="module")
def processor():
    return open_base(ModelConfig()).processor


def _score(text: str, processor, family: str = "qwen3_vl") -> tuple[float, float]:
    boxes = answer_boxes(text, W, H, get_family(family), processor)
    return rewards.iou_reward(boxes, TARGET), rewards.format_reward(boxes, LABEL)


@pytest.mark.parametrize("text, iou, fmt", [
    ('[{"bbox_2d": [100, 100, 600, 600], "label": "nutrition table"}]', 1.0, 1.0),
    ('[{"bbox_2d": [100, 100, 600, 600], "label": "Nutrition Table "}]', 1.0, 1.0),  # case and spaces
    ('[{"bbox_2d": [100, 100, 350, 600], "label": "nutrition table"}]', 0.5, 1.0),  # half the width
    ('[{"bbox_2d": [100, 100, 600, 600], "label": "barcode"}]', 1.0, 0.0),  # wrong label
    ('[{"bbox_2d": [100, 100, 600, 600], "label": "nutrition table"}, '
     '{"bbox_2d": [0, 0, 50, 50], "label": "nutrition table"}]', 1.0, 0.0),  # two boxes: first scored
    ('[{"bbox_2d": [0, 0, 50, 50], "label": "nutrition table"}, '
     '{"bbox_2d": [100, 100, 600, 600], "label": "nutrition table"}]', 0.0, 0.0),  # the right box second
    # a huge box is clamped to the image: IoU = target area / image area = 5000 / 20000
    ('[{"bbox_2d": [-5000, -5000, 99999, 99999], "label": "nutrition table"}]', 0.25, 1.0),
    ('[{"bbox_2d": [100, 100, 600', 0.0, 0.0),  # cut off
    ('the table is at the top left', 0.0, 0.0),
    ("", 0.0, 0.0),
])
def test_rewards_on_hand_written_answers(text, iou, fmt, processor):
    assert _score(text, processor) == (pytest.approx(iou), fmt)


def test_rewards_read_qwen2_vl_special_token_boxes(processor):
    exact = "<|object_ref_start|>nutrition table<|object_ref_end|><|box_start|>(100,100),(600,600)<|box_end|>"
    assert _score(exact, processor, "qwen2_vl") == (pytest.approx(1.0), 1.0)
    no_label = "<|box_start|>(100,100),(600,600)<|box_end|>"
    assert _score(no_label, processor, "qwen2_vl") == (pytest.approx(1.0), 0.0)


# --- sets of boxes (several objects, negatives) -------------------------------------------

T1, T2 = (20.0, 10.0, 60.0, 50.0), (100.0, 10.0, 140.0, 50.0)  # qwen3_vl: [100,100,300,500], [500,100,700,500]
ONE = '{{"bbox_2d": [{}], "label": "nutrition table"}}'


def _set_score(text: str, targets: list, processor) -> tuple[float, float]:
    family = get_family("qwen3_vl")
    boxes = answer_boxes(text, W, H, family, processor)
    return (rewards.match_reward(boxes, targets),
            rewards.set_format_reward(boxes, is_empty_answer(text, family), LABEL))


@pytest.mark.parametrize("items, targets, match, fmt", [
    (["100, 100, 300, 500", "500, 100, 700, 500"], [T1, T2], 1.0, 1.0),  # both, exact
    (["500, 100, 700, 500", "100, 100, 300, 500"], [T1, T2], 1.0, 1.0),  # order plays no part
    (["100, 100, 300, 500"], [T1, T2], 0.5, 1.0),  # one missing: counts 0
    (["100, 100, 300, 500", "100, 100, 300, 500"], [T1], 0.5, 1.0),  # a duplicate is an extra box
    (["100, 100, 300, 500", "500, 100, 700, 500", "0, 0, 50, 50"], [T1, T2], 2 / 3, 1.0),  # one extra
    # one box covering both (120 x 40 px): IoU with one of them 1600 / 4800; the other is missing
    (["100, 100, 700, 500"], [T1, T2], (1600 / 4800) / 2, 1.0),
    ([], [], 1.0, 1.0),  # the empty answer on a negative
    ([], [T1], 0.0, 1.0),  # the empty answer on a positive: well formed, scores nothing
    (["100, 100, 300, 500"], [], 0.0, 1.0),  # a box on a negative
])
def test_set_rewards_on_hand_written_answers(items, targets, match, fmt, processor):
    text = "[" + ", ".join(ONE.format(i) for i in items) + "]"
    assert _set_score(text, targets, processor) == (pytest.approx(match), fmt)


@pytest.mark.parametrize("text", ["nothing here", "", '[{"bbox_2d": [100, 100'])
def test_unreadable_answers_score_nothing_on_a_negative(text, processor):
    assert _set_score(text, [], processor)[1] == 0.0  # no format reward: only the explicit empty answer


def test_set_format_reward_wants_the_asked_label(processor):
    text = '[{"bbox_2d": [100, 100, 300, 500], "label": "barcode"}]'
    assert _set_score(text, [T1], processor) == (pytest.approx(1.0), 0.0)


def test_watch_sets_compares_boxes_per_answer_with_the_true_count():
    answers = [[("t", T1), ("t", T2), ("t", T1)], [], [("t", T1)]]
    signals = watch_sets(answers, [[T1, T2], [], [T1]])
    assert signals == {"watch/boxes_per_answer": pytest.approx(4 / 3), "watch/true_boxes": pytest.approx(1.0),
                       "watch/empty": pytest.approx(1 / 3)}


def test_length_penalty():
    assert rewards.length_penalty(30, reference_tokens=40, max_tokens=64) == 0.0
    assert rewards.length_penalty(40, reference_tokens=40, max_tokens=64) == 0.0
    assert rewards.length_penalty(56, reference_tokens=40, max_tokens=64) == -0.25


def test_watch_signals_parse_rate_and_area_ratio():
    boxes = [[("t", (0.0, 0.0, 20.0, 10.0))], [], [("t", (0.0, 0.0, 10.0, 10.0)), ("t", (0, 0, 1, 1))]]
    targets = [[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]]
    signals = watch(boxes, targets)
    assert signals["watch/parsed"] == pytest.approx(2 / 3)
    assert signals["watch/boxes_per_answer"] == pytest.approx(1.0)
    assert signals["watch/area_ratio"] == pytest.approx((2.0 + 1.0) / 2)


def test_recipe_loads_with_a_grpo_stage():
    recipe = load_recipe("r5-sft-grpo")
    assert [recipe.objective_for(s).name for s in recipe.stages] == ["sft", "grpo"]
    assert recipe.data.num_shifted > 0
    # objective.* is the recipe's: it is not copied into the stages
    recipe = load_recipe("r5-sft-grpo", ["objective.options.max_length=999"])
    assert recipe.objective.options.max_length == 999 and recipe.stages[0].objective is None


@pytest.mark.parametrize("override, needle", [
    ("stages.1.objective.options.num_generations=1", "num_generations=1"),
    ("stages.1.objective.options.beta=-0.1", "beta=-0.1"),
    ("stages.1.objective.options.loss_type=ppo", "loss_type='ppo'"),
    ("stages.1.objective.options.epsilon=0", "epsilon=0"),
    ("stages.1.objective.options.iou_weight=-1", "iou_weight"),
    ("stages.0.objective.name=mrl", "cannot follow"),
])
def test_grpo_options_are_validated(override, needle):
    with pytest.raises(InputError, match=None) as err:
        load_recipe("r5-sft-grpo", [override])
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_shifted_split_is_another_style_and_disjoint():
    image, box = render_nutrition_example(random.Random("s"), shifted=True)
    assert all(SHIFTED_SIDES[0] <= side <= SHIFTED_SIDES[1] for side in image.size)
    assert SHIFTED_SIDES[1] > MAX_SIDE
    dd = make_nutrition_dataset(n_train=2, n_test=2, n_shifted=3, seed=0)
    assert set(dd) == {"train", "test", "shifted"} and len(dd["shifted"]) == 3
    assert not set(dd["shifted"]["image_id"]) & set(dd["test"]["image_id"])
    # row i of the in-domain splits does not depend on whether a shifted split is made
    assert make_nutrition_dataset(2, 2, 0)["test"][1]["objects"] == dd["test"][1]["objects"]


def test_shifted_split_needs_detection_data_and_a_split(tmp_path):
    from vlm_recipes.data.splits import load_splits

    mrl = load_recipe("mrl", ["data.num_shifted=4"])
    with pytest.raises(InputError, match="data.num_shifted=4"):
        load_splits(mrl.data, "retrieval", 0)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    row = {"image": str(tmp_path / "a.png"), "width": 8, "height": 8, "objects": {"bbox": [[0, 0, 0.5, 0.5]]}}
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text(json.dumps(row) + "\n")
    recipe = load_recipe("r4-joint", [f"data.dataset={tmp_path}", "data.num_shifted=2"])
    with pytest.raises(InputError, match="no split 'shifted'"):
        load_splits(recipe.data, "detection", 0)


@pytest.mark.slow  # ~1 min: the shipped base, 4 training images, 24 GRPO steps
def test_short_grpo_run_raises_the_mean_reward(tmp_path):
    """GRPO through the shared run: on 4 training images seen every step, the mean reward of the last
    steps beats that of the first ones (the policy learns where those tables are), the
    reward-hacking signals are logged, rewards.png is drawn and metrics.json has by_stage/shifted."""
    from vlm_recipes.cli.train import main

    run = tmp_path / "grpo"
    code = main(["--recipe", "r5-sft-grpo", "--output-dir", str(run), "--no-wandb",
                 "--set", "data.num_train=4", "--set", "data.num_test=8", "--set", "data.num_shifted=4",
                 "--set", "data.num_val=0", "--set", "stages.0.train.max_steps=1",
                 "--set", "stages.1.train.max_steps=24", "--set", "stages.1.train.learning_rate=1e-3",
                 "--set", "stages.1.train.logging_steps=1"])
    assert code == 0
    log = [e for e in json.loads((run / "train_log.json").read_text()) if e["stage"] == "grpo" and "reward" in e]
    assert len(log) == 24
    first, last = [sum(e["reward"] for e in part) / len(part) for part in (log[:6], log[-6:])]
    assert last > first + MIN_REWARD_RISE, (first, last)
    assert all(0 <= e["watch/parsed"] <= 1 and e["watch/area_ratio"] >= 0 for e in log)
    assert (run / "rewards.png").stat().st_size > 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["by_stage"]) == ["sft", "grpo"] and metrics["by_stage"]["grpo"] == metrics["finetuned"]
    assert set(metrics["shifted"]) == {"base", "sft", "grpo"} and metrics["shifted"]["base"]["n"] == 4
    assert [s["objective"] for s in metrics["stages"]] == ["sft", "grpo"]


def _detection(mean_iou: float, n: int = 10) -> dict:
    return {"mean_iou": mean_iou, "median_iou": mean_iou, "detection_rate": 1.0, "iou_gt_0.5": 0.5,
            "iou_gt_0.7": 0.2, "ap": 0.1, "ap50": 0.3, "n": n}


def test_report_and_leaderboard_show_stages_and_the_shifted_split(tmp_path):
    from vlm_recipes.evaluation.answers import detection_summary
    from vlm_recipes.evaluation.leaderboard import Run, build_leaderboard, to_markdown

    metrics = {"recipe": "r5-sft-grpo", "base_model": "tiny", "family": "qwen3_vl",
               "base": _detection(0.35), "finetuned": _detection(0.65),
               "by_stage": {"sft": _detection(0.61), "grpo": _detection(0.65)},
               "shifted": {"base": _detection(0.2, 4), "sft": _detection(0.3, 4), "grpo": _detection(0.33, 4)},
               "stages": [{"name": "sft", "train_seconds": 1.0, "trainable_params": 5},
                          {"name": "grpo", "train_seconds": 2.0, "trainable_params": 5}],
               "train_seconds": 3.0, "trainable_params": 5}
    text = detection_summary(metrics)
    assert "| after sft | 0.610 |" in text and "| r5-sft-grpo (grpo) | 0.650 |" in text
    assert "## Out-of-domain split (4 images" in text and "| after sft | 0.300 |" in text
    assert "| r5-sft-grpo (grpo) | 0.330 |" in text and "| base | 0.200 |" in text
    board = to_markdown(build_leaderboard([Run(tmp_path / "r5", "complete", metrics)]))
    assert "shifted mean IoU" in board and "0.330" in board and "0.200" in board
    plain = {**metrics, "shifted": None}
    assert "shifted mean IoU" not in to_markdown(build_leaderboard([Run(tmp_path / "r4", "complete", plain)]))


# --- issue 31: the same stop tokens in evaluation and GRPO; prompts_per_step under accumulation -----

def _grpo_objective(recipe, base):
    from vlm_recipes.objectives import build_objective

    return build_objective(recipe, base.processor, base.family, recipe.stages[1].objective)


def test_evaluation_and_grpo_stop_at_the_generation_configs_end_tokens(tmp_path):
    """A model whose generation config lists two end tokens (<|im_end|> and another, here a token the
    model really generates third): evaluation stops at it, TRL's GRPOTrainer stops its sampling at
    the same list, and the rewards cut a completion where evaluation cut the answer."""
    from vlm_recipes.evaluation.generation import _generate, answer_texts, stop_token_ids
    from vlm_recipes.models.loading import load_model
    from vlm_recipes.training.trainer import trainer_class_for, training_arguments

    recipe = load_recipe("r5-sft-grpo", ["data.num_train=2", "data.num_test=1", "data.num_shifted=0"])
    base = open_base(recipe.model)
    model = load_model(base.path, recipe.model, recipe.stages[1].quantization, "cpu")
    tokenizer = base.processor.tokenizer
    image = render_nutrition_example(random.Random(0))[0]
    _, free, _ = _generate(model, base.processor, [image], [recipe.data.prompt], 8, output_scores=False)
    free = free[0].tolist()
    stop_at = next(i for i, t in enumerate(free) if i >= 2 and t not in free[:i] and t != tokenizer.eos_token_id)
    other_end = free[stop_at]
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, other_end]
    assert stop_token_ids(model.generation_config, tokenizer) == [tokenizer.eos_token_id, other_end]

    texts, stopped, _ = _generate(model, base.processor, [image], [recipe.data.prompt], 8, output_scores=False)
    assert stopped[0].tolist()[:stop_at + 1] == free[:stop_at + 1]  # generated up to the second end token
    assert all(t == tokenizer.pad_token_id for t in stopped[0].tolist()[stop_at + 1:])  # and stopped there
    assert texts == [tokenizer.decode(free[:stop_at], skip_special_tokens=False)]

    objective = _grpo_objective(recipe, base)
    model = objective.prepare_model(model)
    args = training_arguments(recipe.stages[1].train, tmp_path, 0, False, True, [], objective=objective)
    trainer = trainer_class_for(objective)(model=model, args=args, objective=objective,
                                           **objective.trainer_inputs(objective.load_data()["train"], []))
    assert trainer.eos_token_ids == stop_token_ids(model.generation_config, tokenizer) == objective.stop_ids
    assert trainer.generation_kwargs["eos_token_id"] == objective.stop_ids  # what its sampling stops at
    completion = free[:stop_at + 1] + [tokenizer.pad_token_id]  # as TRL hands a completion to a reward
    assert answer_texts(tokenizer, [completion], objective.stop_ids) == texts


@pytest.mark.parametrize("accumulation", [1, 2, 4])
def test_prompts_per_step_holds_under_gradient_accumulation(tmp_path, accumulation):
    """TRL generates one batch per optimizer step (steps_per_generation = accumulation): it holds
    prompts_per_step prompts x num_generations answers whatever the accumulation."""
    from vlm_recipes.training.trainer import training_arguments

    recipe = load_recipe("r5-sft-grpo", [f"stages.1.train.gradient_accumulation_steps={accumulation}"])
    options, train = recipe.stages[1].objective.options, recipe.stages[1].train
    args = training_arguments(train, tmp_path, 0, False, True, [], objective=_grpo_objective(recipe, open_base(recipe.model)))
    assert args.steps_per_generation == accumulation
    assert args.generation_batch_size == options.prompts_per_step * options.num_generations
    assert args.per_device_train_batch_size * accumulation == args.generation_batch_size


def test_prompts_per_step_must_split_over_the_accumulation_steps():
    with pytest.raises(InputError) as err:  # 4 prompts x 8 answers = 32, not a multiple of 3
        load_recipe("r5-sft-grpo", ["stages.1.train.gradient_accumulation_steps=3"])
    assert "stages.1.train.gradient_accumulation_steps=3" in str(err.value) and "= 32" in str(err.value)
