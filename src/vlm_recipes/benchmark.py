"""Speed measured side by side, in one process (`scripts/benchmark.py`, `vlm-recipes benchmark`).

What a user choosing between this project and the plain way asks, each answered as a ratio on the
same work, after warm-up, median of repeats:
  train   the shared SFT path (`training.trainer.train_stage`) against TRL's `SFTTrainer` with its
          VLM collator on a prompt-completion dataset: same model and LoRA initialisation, data,
          batch order, learning rate and steps. TRL supervises one token more per row (the "\\n"
          after <|im_end|>); the "aligned" TRL row masks it, so its losses must match ours. TRL with
          its own defaults (gradient checkpointing, bf16) is a second, unaligned row.
  eval    batched greedy generation (the evaluator's path) against one image per generate call,
          on the same images; the answers must be identical.
  encode  the mrl encoder (`models.embedding.encode`) against a plain forward with
          `output_hidden_states=True`, full logits, and pooling in Python.
Peak memory is `torch.cuda.max_memory_allocated` (GPU) or, on CPU, the peak RSS of a fresh
process that trains the same steps with one trainer (RSS within one process keeps what an earlier
run freed).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from transformers import TrainerCallback, set_seed

from .config import RecipeConfig, load_recipe
from .data.chat import user_messages
from .objectives import build_objective
from .objectives.grounding import answer_for

# --- measuring ---------------------------------------------------------------------------------

class PeakMemory:
    """Peak memory (MB) while the block runs: CUDA's allocator peak, or the process's RSS sampled
    every 10 ms. On CPU the benchmark measures each trainer in a fresh process
    (`peak_rss_of_a_fresh_process`): within one process the allocator keeps what an earlier run
    freed, so a second trainer's RSS would say nothing."""

    def __init__(self, device: str):
        self.device, self.peak_mb = device, 0.0

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            return self
        import psutil

        process, self._stop = psutil.Process(), threading.Event()

        def sample():
            while not self._stop.is_set():
                self.peak_mb = max(self.peak_mb, process.memory_info().rss / 2**20)
                self._stop.wait(0.01)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()


class StepClock(TrainerCallback):
    """Wall time at the end of every optimizer step: throughput is taken after `warmup` steps."""

    def __init__(self, counter=None):
        self.ends: list[float] = []
        self.counter = counter

    def on_train_begin(self, args, state, control, **kwargs):
        if self.counter is not None:  # batches built before training (length grouping's lengths) are not steps
            self.counter.restart()

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


class CountingCollator:
    """Wraps a collator: counts the text and image tokens of every batch it builds, the tokens the
    model is fed (`fed(lengths, padded width)`: pads included; default: the padded batch), and the
    seconds it takes (and, with `mask_after_end`, stops supervising the tokens after each row's
    first end-of-turn)."""

    def __init__(self, collate, image_token_id: int, end_token_id: int | None = None, fed=None):
        self.collate, self.image_token_id, self.end_token_id = collate, image_token_id, end_token_id
        self.fed_of = fed or (lambda lengths, width: len(lengths) * width)
        self.restart()

    def restart(self) -> None:
        self.tokens, self.image_tokens, self.fed, self.seconds = [], [], [], []

    def __call__(self, samples):
        start = time.perf_counter()
        batch = self.collate(samples)
        self.seconds.append(time.perf_counter() - start)
        is_image = batch["input_ids"] == self.image_token_id
        self.tokens.append(int(batch["attention_mask"].sum()) - int(is_image.sum()))
        self.image_tokens.append(int(is_image.sum()))
        self.fed.append(self.fed_of(batch["attention_mask"].sum(1).tolist(), batch["input_ids"].shape[1]))
        if self.end_token_id is not None:
            batch["labels"] = mask_after_first(batch["labels"], self.end_token_id)
        return batch


def mask_after_first(labels: torch.Tensor, token_id: int) -> torch.Tensor:
    """Labels with every position after each row's first supervised `token_id` set to -100."""
    hit = (labels == token_id).int()
    after = (hit.cumsum(1) - hit) > 0
    return labels.masked_fill(after, -100)


def throughput(clock: StepClock, counter: CountingCollator, batch_size: int, warmup: int) -> dict:
    steps = len(clock.ends) - 1 - warmup
    seconds = clock.ends[-1] - clock.ends[warmup]
    counted = slice(warmup + 1, warmup + 1 + steps)  # the batches of the timed steps
    real = sum(counter.tokens[counted]) + sum(counter.image_tokens[counted])
    return {"samples_per_s": steps * batch_size / seconds, "s_per_step": seconds / steps,
            "text_tokens_per_s": sum(counter.tokens[counted]) / seconds,
            "image_tokens_per_s": sum(counter.image_tokens[counted]) / seconds,
            "real_tokens_per_s": real / seconds, "pad_fraction": 1 - real / sum(counter.fed[counted]),
            "collate_s_per_step": sum(counter.seconds[counted]) / steps}


def summarise(repeats: list[dict]) -> dict:
    """Median of each figure over the repeats, with the spread (min, max) of samples/s."""
    keys = [k for k in repeats[0] if isinstance(repeats[0][k], (int, float))]
    out = {k: statistics.median(r[k] for r in repeats) for k in keys}
    rates = [r["samples_per_s"] for r in repeats]
    out.update(samples_per_s_min=min(rates), samples_per_s_max=max(rates), repeats=len(repeats))
    if "losses" in repeats[0]:
        out["losses"] = repeats[0]["losses"]
    return out


# --- training: the project's SFT path against TRL -----------------------------------------------

def stage_model(recipe: RecipeConfig, objective, device: str):
    """The recipe's first stage applied to its base, LoRA initialised from the recipe's seed: every
    call gives the same weights, so both trainers start alike."""
    from .models.loading import apply_stage, load_model, resolve_model_path

    set_seed(recipe.seed)
    model = objective.prepare_model(load_model(resolve_model_path(recipe.model), recipe.model,
                                               recipe.stages[0].quantization, device))
    return apply_stage(model, recipe.stages[0])


def fed_tokens_of(train):
    """Tokens the model computes for a batch of these real lengths under `train.packing`."""
    from .data.packing import fed_tokens

    if train.packing == "padding_free":
        return lambda lengths, width: sum(lengths)
    if train.packing == "packed":
        return lambda lengths, width: fed_tokens(lengths, train.max_tokens_per_row)
    return None  # padded


def project_run(recipe, objective, samples, steps: int, device: str, warmup: int, out_dir: Path) -> dict:
    from .training.trainer import train_stage

    stage = recipe.stages[0]
    model = stage_model(recipe, objective, device)
    counter = CountingCollator(objective.collate, image_token_id(objective.processor), fed=fed_tokens_of(stage.train))
    objective.collate, clock = counter, StepClock(counter)
    try:
        with PeakMemory(device) as memory:
            log = train_stage(model, stage, objective, samples, out_dir, recipe.seed, bf16=False,
                              use_cpu=device == "cpu", report_to=[], extra_callbacks=[clock])
    finally:
        del objective.collate  # back to the class's own method
    losses = [entry["loss"] for entry in log if "loss" in entry]
    return {**throughput(clock, counter, stage.train.per_device_train_batch_size, warmup),
            "peak_mem_mb": memory.peak_mb, "final_loss": losses[-1], "losses": losses}


def trl_dataset(samples, recipe, objective, in_memory: bool = True):
    """The samples as the prompt-completion dataset TRL's VLM example trains on. `in_memory`: each
    row's image is the decoded PIL image the project trains on (a transform attaches it), as the
    project's rows hold them; else stored in the dataset (PNG in Arrow, decoded on every access), as
    a hub dataset holds them: the "TRL defaults" row. Decoding costs TRL ~5% of an r4-joint step on
    CPU, a difference of setup, not of the trainers (D31)."""
    from datasets import Dataset

    rows = [{"prompt": user_messages(recipe.data.prompt),
             "completion": [{"role": "assistant", "content": [
                 {"type": "text", "text": answer_for(s, objective.family, recipe.data.label, objective.processor)}]}]}
            for s in samples]
    if not in_memory:
        return Dataset.from_list([{"images": [s.image], **row} for s, row in zip(samples, rows)])
    images = [s.image for s in samples]

    def attach(batch):
        return {"prompt": batch["prompt"], "completion": batch["completion"],
                "images": [[images[i]] for i in batch["row"]]}
    return Dataset.from_list([{"row": i, **row} for i, row in enumerate(rows)]).with_transform(attach)


def trl_run(recipe, objective, dataset, steps: int, device: str, warmup: int, out_dir: Path,
            aligned: bool, trl_defaults: bool = False, float32_lora: bool | None = None) -> dict:
    """TRL's SFTTrainer on `dataset`. `aligned`: its collator's labels stop at <|im_end|> as ours do.
    `trl_defaults`: keep SFTConfig's own gradient checkpointing and bf16 instead of ours (off).
    `float32_lora`: train the LoRA weights in float32 as the project does (default: unless `trl_defaults`)."""
    from trl import SFTConfig, SFTTrainer

    stage = recipe.stages[0]
    train = stage.train
    model = stage_model(recipe, objective, device)
    own = {} if trl_defaults else {"gradient_checkpointing": False, "bf16": False}
    if dataset.format["type"] == "custom":  # in-memory images (trl_dataset): the rows are trainer-ready as they are
        own.update(dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False)
    args = SFTConfig(output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=train.per_device_train_batch_size,
                     learning_rate=train.learning_rate, warmup_steps=train.warmup_ratio, weight_decay=train.weight_decay,
                     lr_scheduler_type=train.lr_scheduler_type, max_grad_norm=train.max_grad_norm,
                     logging_steps=1, save_strategy="no", report_to=[], seed=recipe.seed, use_cpu=device == "cpu",
                     completion_only_loss=True, max_length=None, dataloader_num_workers=0, **own)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=objective.processor)
    if not trl_defaults if float32_lora is None else float32_lora:
        # SFTTrainer casts a quantized model's trainable (LoRA) weights to bf16 whatever `bf16` says; the
        # project trains them in float32. A difference of setup, not of the trainers (D31); on CPU it
        # measured within noise (r4: 2.81-3.04 samples/s with the cast, 2.89-2.93 without).
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    tokenizer = objective.processor.tokenizer
    counter = CountingCollator(trainer.data_collator, image_token_id(objective.processor),
                               tokenizer.convert_tokens_to_ids(tokenizer.eos_token) if aligned else None)
    trainer.data_collator = counter
    clock = StepClock()
    trainer.add_callback(clock)
    with PeakMemory(device) as memory:
        trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {**throughput(clock, counter, train.per_device_train_batch_size, warmup),
            "peak_mem_mb": memory.peak_mb, "final_loss": losses[-1], "losses": losses,
            "gradient_checkpointing": bool(args.gradient_checkpointing), "bf16": bool(args.bf16)}


def image_token_id(processor) -> int:
    return processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")


BATCHING = {"padded": [], "padding_free": ["stages.0.train.packing=padding_free"],
            "packed": ["stages.0.train.packing=packed"], "group_by_length": ["stages.0.train.group_by_length=true"]}
"""The project's rows: how its SFT batches are built (train.packing, train.group_by_length; D31). The
first stage only, the one the benchmark trains (r5's second stage, GRPO, refuses packing)."""


def benchmark_training(recipe_name: str, overrides: list[str], steps: int, repeats: int, device: str, warmup: int,
                       trl_defaults_row: bool = True, modes: tuple[str, ...] = ("padded",),
                       data: str = "default", cpu_memory: bool = True) -> dict:
    """Project (one row per batching mode) vs TRL (aligned masks), alternating within each repeat
    so that drift in the machine's speed hits all alike; plus one TRL run with its own defaults.
    `data`: "default" (the recipe's rows) or "variable" (`variable_sizes`). Peak memory: CUDA's
    allocator peak of each run, or on CPU (`cpu_memory`) the peak RSS of a fresh process per row."""
    overrides = data_overrides(data) + list(overrides)
    recipe = with_steps(load_recipe(recipe_name, overrides), steps)
    objective, samples = training_samples(recipe, steps, data)  # TRL gets the same rows and `objective.processor`
    dataset = trl_dataset(samples, recipe, objective)
    stored = trl_dataset(samples, recipe, objective, in_memory=False)  # TRL's defaults: images as a hub dataset
    recipes = {mode: with_steps(load_recipe(recipe_name, overrides + BATCHING[mode]), steps) for mode in modes}
    project, trl = {mode: [] for mode in modes}, []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            for mode in modes:
                project[mode].append(project_run(recipes[mode], objective, samples, steps, device, warmup,
                                                 Path(tmp) / f"{mode}{i}"))
            trl.append(trl_run(recipe, objective, dataset, steps, device, warmup, Path(tmp) / f"t{i}", aligned=True))
        defaults = (trl_run(recipe, objective, stored, steps, device, warmup, Path(tmp) / "d", aligned=False,
                            trl_defaults=True) if trl_defaults_row else None)
    rows, trl_s = {mode: summarise(runs) for mode, runs in project.items()}, summarise(trl)
    for row in rows.values():
        row.update(ratio=row["samples_per_s"] / trl_s["samples_per_s"], **loss_differences(row, trl_s))
    best = max(rows, key=lambda mode: rows[mode]["samples_per_s"])
    first = rows[modes[0]]
    result = {"recipe": recipe.name, "data": data, "steps": steps, "batch_size": recipe.stages[0].train.per_device_train_batch_size,
              "warmup_steps": warmup, "project": first, "project_modes": rows, "trl_sft": trl_s,
              "ratio": first["ratio"], "loss_rel_diff": first["loss_rel_diff"], "loss_rel_diff_max": first["loss_rel_diff_max"],
              "best_mode": best, "ratio_best": rows[best]["ratio"],
              "masks": "aligned: TRL's label on the token after <|im_end|> is masked, as the project does"}
    if data == "variable":
        result["image_sizes"] = VARIABLE_SIZES
    if defaults is not None:
        result["trl_sft_defaults"] = {k: v for k, v in defaults.items() if k != "losses"}
        result["ratio_vs_trl_defaults"] = first["samples_per_s"] / defaults["samples_per_s"]
    if device == "cpu" and cpu_memory:
        probes = [(rows[mode], "project", BATCHING[mode]) for mode in modes] + [(trl_s, "trl", [])]
        if defaults is not None:
            probes.append((result["trl_sft_defaults"], "trl-defaults", []))
        for row, trainer, extra in probes:
            row["peak_mem_mb"] = peak_rss_of_a_fresh_process(trainer, recipe_name, overrides + extra, steps, device, data)
    return result


def data_overrides(data: str) -> list[str]:
    """Recipe overrides that go with the training rows: variable data under a photo-sized budget."""
    return list(VARIABLE_BUDGET) if data == "variable" else []


def loss_differences(row: dict, reference: dict) -> dict:
    diffs = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(row["losses"], reference["losses"])]
    return {"loss_rel_diff": diffs[-1], "loss_rel_diff_max": max(diffs)}


def training_samples(recipe: RecipeConfig, steps: int, data: str):
    """The objective and the training rows `steps` steps use (`data`: "default" or "variable")."""
    from .models.loading import open_base

    base = open_base(recipe.model)
    objective = build_objective(recipe, base.processor, base.family)
    samples = objective.load_data()["train"][:steps * recipe.stages[0].train.per_device_train_batch_size]
    if data == "variable":
        size = base.processor.image_processor.size
        samples = variable_sizes(samples, size["shortest_edge"], size["longest_edge"], recipe.seed)
    return objective, samples


VARIABLE_BUDGET = ("model.min_pixels=32768", "model.max_pixels=655360")
"""The processor's pixel budget for `--data variable` (before the user's --set): 32 to 640 image tokens
of 32x32 px (Qwen3-VL; 42 to 836 of 28x28 px for Qwen2/2.5-VL), the range of photos under a real
budget. The tiny bases take any size; their own budget (at most 25 tokens) has no spread to speak of."""
VARIABLE_SIZES = ("photos under a pixel budget of 32,768-655,360 px (32-640 image tokens of 32x32 px): image area "
                  "log-uniform in [min_pixels, max_pixels], aspect ratio (w:h) uniform over 1:2, 9:16, 3:4, 1:1, "
                  "4:3, 16:9, 2:1; seeded by the recipe's seed; the same images and processor budget for every row")
ASPECTS = (1 / 2, 9 / 16, 3 / 4, 1.0, 4 / 3, 16 / 9, 2.0)


def variable_sizes(samples: list, min_pixels: int, max_pixels: int, seed: int) -> list:
    """The detection samples with each image resized (and its box scaled) to a size drawn as
    `VARIABLE_SIZES` says: the spread of token counts that real photos have under a pixel budget."""
    import math
    import random

    rng, out = random.Random(seed), []
    for sample in samples:
        area = math.exp(rng.uniform(math.log(min_pixels), math.log(max_pixels)))
        aspect = rng.choice(ASPECTS)
        width, height = max(28, round(math.sqrt(area * aspect))), max(28, round(math.sqrt(area / aspect)))
        sx, sy = width / sample.width, height / sample.height
        objects = tuple((label, (x1 * sx, y1 * sy, x2 * sx, y2 * sy)) for label, (x1, y1, x2, y2) in sample.objects)
        out.append(dataclasses.replace(sample, image=sample.image.resize((width, height)), width=width, height=height,
                                       objects=objects))
    return out


def peak_rss_of_a_fresh_process(trainer: str, recipe_name: str, overrides: list[str], steps: int, device: str,
                                data: str = "default") -> float:
    """Peak RSS (MB) of a new process that trains `steps` steps with `trainer` ("project", "trl" with
    the project's masks, or "trl-defaults"):
    in the benchmark's own process the allocator keeps what an earlier run freed, so its RSS says
    nothing about the second trainer."""
    code = ("import json, sys; from vlm_recipes.benchmark import probe_memory; "
            "print(json.dumps(probe_memory(*json.loads(sys.argv[1]))))")
    args = json.dumps([trainer, recipe_name, overrides, steps, device, data])
    done = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe of {trainer} failed: {done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def probe_memory(trainer: str, recipe_name: str, overrides: list[str], steps: int, device: str,
                 data: str = "default") -> float:
    """The peak RSS (MB) while `trainer` trains (loading the model and data left out)."""
    recipe = with_steps(load_recipe(recipe_name, overrides), steps)
    objective, samples = training_samples(recipe, steps, data)
    with tempfile.TemporaryDirectory() as tmp:
        if trainer == "project":
            return project_run(recipe, objective, samples, steps, device, 0, Path(tmp))["peak_mem_mb"]
        return trl_run(recipe, objective, trl_dataset(samples, recipe, objective, in_memory=trainer == "trl"), steps,
                       device, 0, Path(tmp), aligned=trainer == "trl", trl_defaults=trainer == "trl-defaults")["peak_mem_mb"]


def with_steps(recipe: RecipeConfig, steps: int) -> RecipeConfig:
    """The recipe's first stage alone, for `steps` steps, logging every step, no validation or
    checkpoints in the timed loop, and only the training rows those steps use generated (generated
    row i does not depend on the count)."""
    stage = recipe.stages[0]
    train = dataclasses.replace(stage.train, max_steps=steps, logging_steps=1, save_steps=10**9)
    used = steps * stage.train.per_device_train_batch_size
    data = dataclasses.replace(recipe.data, num_val=0, num_train=min(recipe.data.num_train, used))
    return dataclasses.replace(recipe, data=data, stages=(dataclasses.replace(stage, train=train),))


# --- evaluation: batched against one at a time ------------------------------------------------

def benchmark_evaluation(recipe: RecipeConfig, num_images: int, device: str, repeats: int) -> dict:
    from .evaluation.generation import generate_answers
    from .models.loading import load_model, open_base

    base = open_base(recipe.model)
    objective = build_objective(recipe, base.processor, base.family)
    images = [s.image for s in objective.load_data()["test"][:num_images]]
    model = load_model(base.path, recipe.model, recipe.stages[0].quantization, device)
    prompt, evaluation = recipe.data.prompt, recipe.eval

    def answers(batch_size: int):
        start = time.perf_counter()
        texts, _ = generate_answers(model, base.processor, images, prompt, batch_size, evaluation.max_new_tokens,
                                    desc=f"batch {batch_size}")
        return texts, len(images) / (time.perf_counter() - start)

    answers(evaluation.batch_size)  # warm-up
    batched, single = [], []
    for _ in range(repeats):  # alternated, so that drift in the machine's speed hits both alike
        batched.append(answers(evaluation.batch_size))
        single.append(answers(1))
    batched_rate = statistics.median(rate for _, rate in batched)
    single_rate = statistics.median(rate for _, rate in single)
    same = [a == b for a, b in zip(batched[0][0], single[0][0])]
    return {"images": len(images), "batch_size": evaluation.batch_size,
            "batched_answers_per_s": batched_rate, "single_answers_per_s": single_rate,
            "ratio": batched_rate / single_rate, "identical_answers": all(same),
            "identical_fraction": sum(same) / len(same)}


# --- mrl encoding: the project's encoder against a plain forward --------------------------------

def alternated_rates(ours, theirs, items: int, repeats: int) -> tuple[list, list]:
    """(result, items per second) of each call of `ours()` and `theirs()` after one warm-up call each,
    alternated, so that drift in the machine's speed hits both alike."""
    def rate(fn):
        start = time.perf_counter()
        result = fn()
        return result, items / (time.perf_counter() - start)

    rate(ours), rate(theirs)  # warm-up
    timed = [(rate(ours), rate(theirs)) for _ in range(repeats)]
    return [a for a, _ in timed], [b for _, b in timed]


def benchmark_encoding(num_images: int, device: str, repeats: int, model: str = "tiny") -> dict:
    from .models.embedding import EncodeSettings, encode, pool, tokenize
    from .models.loading import load_model, open_base

    recipe = load_recipe("mrl", [f"model.name_or_path={model}", f"data.num_test={num_images}", "data.num_train=1"])
    base = open_base(recipe.model)
    objective = build_objective(recipe, base.processor, base.family)
    rows = objective.load_data()["test"][:num_images]
    images = [t.image for t in (r.target for r in rows)]
    net = load_model(base.path, recipe.model, recipe.stages[0].quantization, device).eval()
    settings = EncodeSettings.from_options(recipe.objective.options, recipe.eval.batch_size)

    def project():
        return encode(net, base.processor, [None] * len(images), images, settings.target_instruction, settings)

    @torch.no_grad()
    def plain():
        out = []
        for start in range(0, len(images), settings.batch_size):
            chunk = images[start:start + settings.batch_size]
            batch = tokenize(base.processor, [None] * len(chunk), chunk, settings.target_instruction,
                             settings.max_length)
            hidden = net(**{k: v.to(device) for k, v in batch.items()}, output_hidden_states=True).hidden_states[-1]
            out.append(torch.nn.functional.normalize(pool(hidden, batch["attention_mask"], settings.pooling).float(),
                                                     dim=-1).cpu())
        return torch.cat(out)

    ours, theirs = alternated_rates(project, plain, len(images), repeats)
    ours_rate, theirs_rate = statistics.median(r for _, r in ours), statistics.median(r for _, r in theirs)
    return {"images": len(images), "batch_size": settings.batch_size, "project_items_per_s": ours_rate,
            "plain_items_per_s": theirs_rate, "ratio": ours_rate / theirs_rate,
            "max_abs_diff": float((ours[0][0] - theirs[0][0]).abs().max())}


def environment(device: str) -> dict:
    import transformers
    import trl

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "trl": trl.__version__, "device": device, "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d")}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


# --- real-size architectures, random weights (GPU mode) ---------------------------------------

PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12,
                   "4090": 165e12}
"""Dense bf16 tensor-core peak by GPU name fragment (vendor datasheets, without sparsity)."""

REAL_SIZE_RECIPES = {"r1-llm-only": [], "r4-joint": [],
                     # a 2B+ LLM is trained through LoRA for mrl (the tiny recipe trains it fully)
                     "mrl": ["lora.targets=llm", "freeze.llm=true"]}


def benchmark_real_size(config, recipes: list[str], steps: int, warmup: int, device: str, batch_size: int = 4,
                        image_side: int = 448, text_tokens: int = 64) -> dict:
    """Samples/s, tokens/s, MFU and peak memory of one optimizer step loop per recipe on `config`
    (a transformers config, randomly initialised), with a `image_side` px image and `text_tokens`
    text tokens per sample. The weights go through the project's own loading (4-bit included) and
    `apply_stage` (freezing, LoRA), so what is measured is what a run would train."""
    from transformers import AutoModelForImageTextToText

    from .models.loading import apply_stage, load_model

    with torch.device("meta"):
        counted = AutoModelForImageTextToText.from_config(config)
    vision_params = sum(p.numel() for p in counted.model.visual.parameters())
    text_params = sum(p.numel() for n, p in counted.named_parameters() if "visual" not in n and "embed_tokens" not in n)
    out = {"params": sum(p.numel() for p in counted.parameters()), "image_side": image_side,
           "text_tokens": text_tokens, "batch_size": batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        write_random_checkpoint(config, tmp, device)
        for name in recipes:
            recipe = load_recipe(name, REAL_SIZE_RECIPES.get(name, []))
            stage = recipe.stages[0]
            model = apply_stage(load_model(tmp, recipe.model, stage.quantization, device), stage)
            inputs = random_inputs(config, batch_size, image_side, text_tokens, model.device)
            step = mrl_step(model, inputs) if recipe.objective.name == "mrl" else sft_step(model, inputs)
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
            with PeakMemory(device) as memory:
                seconds = timed_steps(step, optimizer, steps, warmup, device)
            per_sample = 6 * (text_params * inputs["llm_tokens"] + vision_params * inputs["patches"]) / batch_size
            rate = batch_size / seconds
            out[name] = {"samples_per_s": rate, "s_per_step": seconds,
                         "llm_tokens_per_s": inputs["llm_tokens"] / seconds, "peak_mem_mb": memory.peak_mb,
                         "mfu": mfu(per_sample * rate, device),
                         "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}
            del model, optimizer, step
            if device == "cuda":
                torch.cuda.empty_cache()
    return out


def write_random_checkpoint(config, path: str, device: str) -> None:
    from transformers import AutoModelForImageTextToText

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device if device != "cuda" else "cuda:0"):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    model.save_pretrained(path)
    del model


def random_inputs(config, batch: int, side: int, text_tokens: int, device) -> dict:
    """Token ids and pixel values shaped as the processor would make them for one `side` x `side`
    image and `text_tokens` text tokens a row (the last quarter supervised); plus a text-only
    query batch for mrl."""
    vision = config.vision_config
    grid = side // vision.patch_size
    image_tokens = grid * grid // vision.spatial_merge_size**2
    patch_dim = 3 * vision.temporal_patch_size * vision.patch_size**2
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(100, 150000, (batch, text_tokens), generator=generator)
    image_part = torch.tensor([config.vision_start_token_id] + [config.image_token_id] * image_tokens
                              + [config.vision_end_token_id]).expand(batch, -1)
    ids = torch.cat([image_part, text], dim=1)
    labels = ids.clone()
    labels[:, : ids.shape[1] - text_tokens // 4] = -100
    images = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "mm_token_type_ids": (ids == config.image_token_id).long(),  # 1 marks image slots, as the processor does
              "pixel_values": torch.randn(batch * grid * grid, patch_dim, generator=generator),
              "image_grid_thw": torch.tensor([[1, grid, grid]] * batch)}
    queries = {"input_ids": text, "attention_mask": torch.ones_like(text)}
    move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    return {"images": move(images), "labels": labels.to(device), "queries": move(queries),
            "llm_tokens": batch * ids.shape[1], "patches": batch * grid * grid}


def sft_step(model, inputs):
    def step():
        return model(**inputs["images"], labels=inputs["labels"]).loss
    return step


def mrl_step(model, inputs):
    from .models.embedding import embed
    from .objectives.mrl import matryoshka_info_nce

    dim = model.config.get_text_config().hidden_size
    dims = tuple(d for d in (64, 128, 256, 512, 1024, dim) if d <= dim)

    def step():
        queries, targets = embed(model, inputs["queries"], "last"), embed(model, inputs["images"], "last")
        return matryoshka_info_nce(queries, targets, dims, (1.0,) * len(dims), 20.0, gather=False)
    return step


def timed_steps(step, optimizer, steps: int, warmup: int, device: str) -> float:
    """Seconds per optimizer step after `warmup` untimed steps."""
    def one():
        step().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        one()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    sync()
    return (time.perf_counter() - start) / steps


def mfu(flops_per_s: float, device: str) -> float | None:
    """Model FLOPs utilisation: 6 x params x tokens (forward + backward, the usual convention, which
    over-counts frozen weights' skipped weight gradients) per second over the GPU's bf16 peak."""
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    peak = next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)
    return flops_per_s / peak if peak else None
