"""FSDP2 (issue 16, DECISIONS D27): 2 gloo processes on CPU, launched with the settings of the shipped
configs/accelerate/fsdp.yaml, against 1 process with the same global batch.

accelerate 1.15 turns FSDP on only for GPU-like process groups (AcceleratorState leaves a
MULTI_CPU launch as plain data parallel), while torch's FSDP2 itself runs on CPU with gloo. The
worker below therefore flips that one switch (`_fsdp_on_cpu`) so that the project's FSDP code paths
(training through Trainer/accelerate's `fully_shard`, validation, sharded evaluation of the gathered
model, saving, checkpoints and --resume) run here; on GPUs accelerate does it by itself. Each run
must leave accelerate's FSDP checkpoint file behind, so a silently unsharded run fails the tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from test_distributed import _argv, _free_port, _losses, become_launched_process, one_process, one_thread, refused

ROOT = Path(__file__).resolve().parents[1]
RUNS = {  # name: (recipe, extra flags); per-device batch 4 on 2 processes = 8 on one
    "r2": ("r2-vision-only", []),  # full fine-tune: the weights themselves sharded
    "r4": ("r4-joint", ["--set", "lora.dropout=0.0"]),  # 4-bit + LoRA (masks depend on the batch's shape)
}
MERGED = ("r5-sft-grpo", ["--set", "lora.dropout=0.0", "--set", "stages.1.train.max_steps=1",  # SFT LoRA merged,
                          "--set", "data.num_shifted=4"])  # then handed to GRPO
# validation (2 rows carved from 26: 24 = 3 global batches), best checkpoint kept; stopped by SIGTERM
# after step 2 and resumed, against one process that ran straight through
VALIDATED = ["--set", "data.num_train=26", "--set", "data.num_val=2", "--set", "train.eval_steps=2",
             "--set", "train.load_best_at_end=true"]


def _fsdp_yaml_env() -> dict[str, str]:
    """The environment `accelerate launch --config_file configs/accelerate/fsdp.yaml` gives its processes."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(
        ["--config_file", str(ROOT / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "2", "x.py"])
    env = prepare_multi_gpu_env(_validate_launch_command(args)[0])
    return {k: v for k, v in env.items() if k.startswith(("FSDP_", "ACCELERATE_"))}


def _fsdp_on_cpu() -> None:
    """Let accelerate's state take the FSDP launch on a CPU (gloo) process group, as it does on GPUs."""
    from accelerate import state
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    init = state.AcceleratorState.__init__

    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = kwargs.get("fsdp_plugin") or FullyShardedDataParallelPlugin()

    state.AcceleratorState.__init__ = patched


def _worker(rank: int, port: int, env: dict, runs: list[list[str]], out):
    become_launched_process(rank, 2, port)
    os.environ.update(env)  # what accelerate launch exports from fsdp.yaml
    _fsdp_on_cpu()
    from signal_at import install
    from vlm_recipes.cli.train import main

    codes = []
    for argv in runs:
        undo = None
        if argv[0] == "SIGNAL":  # ["SIGNAL", spec, *argv]: this run stops itself there (tests/signal_at.py)
            undo = install(argv[1])
            argv = argv[2:]
        codes.append(main(argv))
        if undo:
            undo()
    out.put((rank, codes))


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("fsdp")
    runs = [_argv(recipe, extra, 4, root / name) for name, (recipe, extra) in {**RUNS, "r5": MERGED}.items()]
    validated = _argv("r2-vision-only", VALIDATED, 4, root / "validated")
    runs += [["SIGNAL", "vision-full:2:SIGTERM", *validated], ["--resume", str(root / "validated")]]
    queue = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_worker, args=(_free_port(), _fsdp_yaml_env(), runs, queue), nprocs=2, join=True,
                       start_method="spawn")
    return root, dict(queue.get() for _ in range(2))


def _json(path: Path):
    return json.loads(path.read_text())


def test_the_shipped_config_asks_for_fsdp2_with_the_models_own_wrapping():
    env = _fsdp_yaml_env()
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["FSDP_ACTIVATION_CHECKPOINTING"] == "true"
    assert "FSDP_TRANSFORMER_CLS_TO_WRAP" not in env  # a class one family lacks would fail the others
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "false"  # every process loads the whole model (GRPO needs it)


def test_gpu_list_with_an_accelerate_config_launches_with_it(monkeypatch, tmp_path):
    """`--gpu 0,1 --accelerate-config configs/accelerate/fsdp.yaml`: accelerate's launcher gets the file
    (and no --multi_gpu, which would override it) and one process per GPU."""
    import accelerate.commands.launch as launch

    from vlm_recipes.training.launch import launch_data_parallel

    seen = {}
    monkeypatch.setattr(launch, "launch_command", lambda args: seen.update(vars(args)))
    config = ROOT / "configs" / "accelerate" / "fsdp.yaml"
    argv = ["--recipe", "r2-vision-only", "--gpu", "0,1", "--accelerate-config", str(config)]
    assert launch_data_parallel(argv, 2, tmp_path / "run", "cuda", config) == 0
    assert seen["config_file"] == str(config) and seen["num_processes"] == 2 and not seen["multi_gpu"]
    assert seen["module"] and seen["training_script"] == "vlm_recipes.cli.train"
    assert seen["training_script_args"][-2:] == ["--output-dir", str(tmp_path / "run")]


def test_grpo_with_rank0_only_loading_fails_with_one_line(monkeypatch, capsys, tmp_path):
    err = refused(monkeypatch, capsys, tmp_path,
                  {"ACCELERATE_USE_FSDP": "true", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}, "r5-sft-grpo")
    assert "stage 'grpo'" in err and "fsdp_cpu_ram_efficient_loading: false" in err


def test_every_run_completes_and_is_really_sharded(fsdp_runs):
    root, codes = fsdp_runs
    assert codes[0] == codes[1] == [0, 0, 0, 143, 0]  # the stopped run: SIGTERM's code, then resumed
    for name in [*RUNS, "r5", "validated"]:
        assert _json(root / name / "status.json") == {"state": "complete"}
        assert list((root / name / "trainer").glob("*/checkpoint-*/pytorch_model_fsdp.bin")), name


@pytest.mark.parametrize("name", list(RUNS))
def test_fsdp_trains_and_evaluates_likeone_process(fsdp_runs, tmp_path, name):
    """Per-step losses equal (rel 1e-4); base and fine-tuned metrics and predictions exactly equal:
    the gathered model evaluates its shard of 5 rows (uneven: 3 and 2) as one process would."""
    root, _ = fsdp_runs
    recipe, extra = RUNS[name]
    one, two = one_process(recipe, extra, tmp_path / "one"), root / name
    assert _losses(two) == pytest.approx(_losses(one), rel=1e-4) and len(_losses(one)) >= 3
    metrics = [_json(d / "metrics.json") for d in (one, two)]
    assert metrics[0]["base"] == metrics[1]["base"] and metrics[0]["base"]["n"] == 5
    assert metrics[0]["finetuned"] == metrics[1]["finetuned"]
    assert _json(one / "predictions.json") == _json(two / "predictions.json")


def test_a_merged_stage_is_handed_on_likeone_process(fsdp_runs, tmp_path):
    """r5: the SFT stage's LoRA is merged into the gathered weights, saved, evaluated and loaded by
    the GRPO stage. SFT losses and the SFT stage's test metrics equal one process's; GRPO samples its
    answers per process, so that stage only has to complete."""
    root, _ = fsdp_runs
    one, two = one_process(*MERGED, tmp_path / "one"), root / "r5"
    sft = [[e["loss"] for e in _json(d / "train_log.json") if "loss" in e and e["stage"] == "sft"] for d in (one, two)]
    assert sft[1] == pytest.approx(sft[0], rel=1e-4) and len(sft[0]) == 3
    assert _json(one / "metrics.json")["by_stage"]["sft"] == _json(two / "metrics.json")["by_stage"]["sft"]


def test_the_saved_model_scores_what_the_run_evaluated(fsdp_runs):
    """model/ holds the whole trained weights (gathered from the shards, named as without FSDP's
    activation-checkpointing wrappers), not one process's shard: `evaluate` on it gives the run's
    fine-tuned metrics exactly."""
    from vlm_recipes import api

    root, _ = fsdp_runs
    with one_thread():
        scored = api.evaluate(root / "r2" / "model", "synthetic")
    assert scored["metrics"] == _json(root / "r2" / "metrics.json")["finetuned"]
    from safetensors import safe_open

    with safe_open(str(root / "r2" / "model" / "model.safetensors"), "pt") as saved:
        assert "lm_head.weight" not in saved.keys()  # tied to the embeddings: saved once, as without FSDP


def test_validation_and_resume_under_fsdp_matchone_process(fsdp_runs, tmp_path):
    """Stopped after step 2 and resumed under FSDP, against one process straight through: the same
    losses, the same validation history, the same best step and test metrics."""
    root, _ = fsdp_runs
    one, two = one_process("r2-vision-only", VALIDATED, tmp_path / "one"), root / "validated"
    assert _losses(two) == pytest.approx(_losses(one), rel=1e-4)
    history = [_json(d / "eval_history.json") for d in (one, two)]
    assert history[0] == history[1] and len(history[0]) == 2
    metrics = [_json(d / "metrics.json") for d in (one, two)]
    assert metrics[0]["best"] == metrics[1]["best"] and metrics[0]["finetuned"] == metrics[1]["finetuned"]


def test_save_drops_a_tied_weight_only_when_it_equals_its_source():
    """Gathered, tied weights are two tensors: lm_head is dropped (the model saves it once) only when
    it holds the embedding's values; a pair that differs is saved whole (issue 31)."""
    from vlm_recipes.models.distributed import without_tied_copies

    embed = torch.randn(5, 3)
    tied = {"lm_head.weight": "model.embed_tokens.weight"}
    for lm_head in (embed, embed.clone()):  # the same tensor, or equal values in another one
        kept = without_tied_copies({"model.embed_tokens.weight": embed, "lm_head.weight": lm_head}, tied)
        assert list(kept) == ["model.embed_tokens.weight"]
    untied = embed + 1e-3
    kept = without_tied_copies({"model.embed_tokens.weight": embed, "lm_head.weight": untied}, tied)
    assert kept.keys() == {"model.embed_tokens.weight", "lm_head.weight"} and kept["lm_head.weight"] is untied
    assert without_tied_copies({"lm_head.weight": untied}, tied) == {"lm_head.weight": untied}  # no source: kept
