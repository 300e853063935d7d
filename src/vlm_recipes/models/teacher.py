"""The teacher of `mrl` distillation: resolved, loaded frozen, and its embeddings of the training
split cached once per stage (objectives/distillation.py has the loss).

    teacher = Teacher.resolve(options, batch_size=64)       # checks only: one InputError line if unusable
    cache = TeacherCache()
    cache.fill_from(teacher, train_dataset, num_hard_negatives, "cpu")  # loads the weights, encodes what is missing
    rows = cache.lookup(batch_samples, num_hard_negatives)   # TeacherBatch, rows as the student's batch

`options.teacher` is a finished `mrl` run (its directory, or its `model/`), a checkpoint directory
or a hub id. A run brings its own pooling, instructions and training temperature (its config.yaml);
a run of another objective (a detection SFT run) has none, so it needs `teacher_pooling` and fails
without it; a plain checkpoint is embedded as the student embeds (its pooling and instructions).
The teacher runs in eval mode without gradients, optionally in 4-bit, and is released once its
embeddings are cached: during training only the cache (rows x hidden floats) is held.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import ModelConfig, MRLOptions, QuantizationConfig
from ..config.loading import read_yaml_mapping
from ..errors import InputError
from ..readers import read_json
from .distributed import map_sharded
from .embedding import EncodeSettings, encode
from .loading import MODEL_FIX, check_model_files

WHERE = "objective.options.teacher"


@dataclass
class Teacher:
    """Where the teacher is and how it embeds; `model`/`processor` are loaded on demand."""
    source: str
    """What the user named (a run, a model directory, a hub id)."""
    model_dir: str
    """What is loaded: a checkpoint directory or LoRA adapter directory, or a hub id."""
    settings: EncodeSettings
    temperature: float | None = None
    """The temperature its mrl run trained at (learned, if it learned one); None: not an mrl run."""
    load_in_4bit: bool = False
    model: object = None
    processor: object = None

    @classmethod
    def resolve(cls, options: MRLOptions, batch_size: int) -> "Teacher":
        """Every check that needs no weights: the path, the run's state and objective, the settings."""
        model_dir, run_dir = locate(options.teacher)
        run = read_run_config(run_dir) if run_dir else None
        theirs = run.get("objective", {}) if run else {}
        mrl = (theirs.get("options") or {}) if theirs.get("name") == "mrl" else None
        if run is not None and mrl is None and options.teacher_pooling is None:
            raise InputError(f"{WHERE}={options.teacher}: a {theirs.get('name', '?')} run, not an mrl embedder, so it "
                             "has no pooling or instructions to embed with; train the teacher with --recipe mrl, or "
                             "set objective.options.teacher_pooling (and teacher_*_instruction) to embed with it anyway")
        own = mrl or {}

        def pick(key: str):  # explicit option, else the teacher run's, else the student's
            value = getattr(options, f"teacher_{key}")
            return value if value is not None else own.get(key, getattr(options, key))

        settings = EncodeSettings(pick("pooling"), pick("query_instruction"), pick("target_instruction"),
                                  int(own.get("max_length", options.max_length)), batch_size)
        return cls(options.teacher, model_dir, settings, run_temperature(run_dir, own) if mrl is not None else None,
                   options.teacher_4bit)

    def load(self, device: str) -> None:
        """Weights and processor, frozen and in eval mode (idempotent)."""
        if self.model is None:
            self.model, self.processor = load_frozen(self.model_dir, device, self.load_in_4bit)

    def release(self) -> None:
        """Drop the weights (the cache keeps what training needs); `load` brings them back."""
        self.model = None

    def encode(self, texts: list[str | None], images: list, instruction: str) -> torch.Tensor:
        """(N, Ht) normalised embeddings, 1/N of the batches per process, gathered (as evaluation)."""
        rows = list(zip(texts, images))
        return map_sharded(lambda part: encode(self.model, self.processor, [t for t, _ in part],
                                               [i for _, i in part], instruction, self.settings),
                           rows, self.settings.batch_size)


def locate(name: str) -> tuple[str, Path | None]:
    """(what to load, the run directory it belongs to or None) for `options.teacher`."""
    path = Path(name).expanduser()
    if not path.exists():
        # what cannot be a hub id ("org/name") is a directory that is not there
        if name.startswith(("/", ".", "~")) or name.count("/") != 1:
            raise InputError(f"{WHERE}={name}: no such directory; pass a finished mrl run (runs/mrl-.../model), "
                             "a checkpoint directory or a hub id (org/name)")
        from ..data.sources import check_hub_available

        check_hub_available(name, "model")
        return name, None
    if not path.is_dir():
        raise InputError(f"{WHERE}={name}: not a directory; pass a run's model/ directory or a checkpoint directory")
    run_dir = None
    if (path / "config.yaml").is_file() and (path / "model").is_dir():
        run_dir, path = path, path / "model"
    else:  # a run's model/, or an earlier stage's stages/<n>-<name>/
        run_dir = next((p for p in (path.parent, path.parent.parent) if (p / "config.yaml").is_file()
                        and (p / "status.json").is_file()), None)
    if not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
        raise InputError(f"{WHERE}={name}: {path} holds no model (config.json) or LoRA adapter "
                         "(adapter_config.json)")
    check_model_files(path)  # every file read through its kind's reader, before any weights load
    if (path / "adapter_config.json").is_file() and "base_model_name_or_path" not in read_json(
            path / "adapter_config.json"):
        raise InputError(f"{path / 'adapter_config.json'}: no base_model_name_or_path: {MODEL_FIX}")
    return str(path), run_dir


def read_run_config(run_dir: Path) -> dict:
    """The teacher run's config.yaml; a run that did not finish is not a teacher."""
    fix = f"repair it, or name the teacher's model/ directory alone ({WHERE})"
    state = read_json(run_dir / "status.json", dict, fix, default={}, required={"state": str}).get("state")
    if state is not None and state != "complete":
        raise InputError(f"{WHERE}: the run {run_dir} is {state}, not complete; finish it (--resume) first")
    config = run_dir / "config.yaml"
    try:
        raw = read_yaml_mapping(config)  # UTF-8, valid YAML, a mapping, no key twice
    except InputError as err:
        raise InputError(f"{WHERE}: {err}: {fix}") from None
    objective = raw.get("objective")
    if not isinstance(objective, dict) or not isinstance(objective.get("name"), str) or not isinstance(
            objective.get("options") or {}, dict):
        raise InputError(f"{config}: no objective mapping with a name (not a run's config.yaml): {fix}")
    return raw


def run_temperature(run_dir: Path | None, options: dict) -> float | None:
    """The temperature an mrl run trained at: its learned one (train_log.json) if it learned one."""
    if run_dir is not None and options.get("learn_temperature"):
        log = read_json(run_dir / "train_log.json", list, "repair or delete it", default=[])
        learned = [e["learned_temperature"] for e in log if isinstance(e, dict) and "learned_temperature" in e]
        if learned:
            return float(learned[-1])
    return float(options["temperature"]) if "temperature" in options else MRLOptions.temperature


def load_frozen(model_dir: str, device: str, load_in_4bit: bool):
    """(model, processor): a checkpoint, or a LoRA adapter on its base (merged, unless 4-bit), in
    eval mode with every weight frozen."""
    from .loading import load_model, load_processor, peft_quietly

    quant, cfg = QuantizationConfig(load_in_4bit=load_in_4bit), ModelConfig()
    adapter = Path(model_dir) / "adapter_config.json"
    if adapter.is_file():
        from peft import PeftModel

        base = json.loads(adapter.read_text())["base_model_name_or_path"]
        with peft_quietly():
            model = PeftModel.from_pretrained(load_model(base, cfg, quant, device), model_dir)
        model = model if load_in_4bit else model.merge_and_unload()  # never merged into 4-bit weights
    else:
        model = load_model(model_dir, cfg, quant, device)
    model.eval().requires_grad_(False)
    return model, load_processor(model_dir, cfg)


@dataclass(frozen=True)
class TeacherBatch:
    """The teacher's normalised embeddings of one batch, rows exactly as the student's: queries
    (B, Ht) and targets ((1 + k) * B, Ht) laid out [B positives, then the k * B hard negatives]."""
    queries: torch.Tensor
    targets: torch.Tensor


@dataclass
class TeacherCache:
    """The teacher's embeddings by input: queries by text, targets by `Target.key` (an input always
    gets the same embedding, so rows follow whatever batch asks for them)."""
    queries: dict[str, torch.Tensor] = field(default_factory=dict)
    targets: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0
    """Time spent encoding so far (loading included)."""

    def fill_from(self, teacher: Teacher, dataset, num_hard_negatives: int, device: str, chunk: int = 1024) -> int:
        """`fill` over an indexable dataset (a lazily rendered one too), `chunk` samples at a time so
        that only a chunk's images are held; returns how many inputs were encoded."""
        return sum(self.fill(teacher, [dataset[i] for i in range(start, min(start + chunk, len(dataset)))],
                             num_hard_negatives, device) for start in range(0, len(dataset), chunk))

    def fill(self, teacher: Teacher, samples: list, num_hard_negatives: int, device: str) -> int:
        """Encode every query and target (hard negatives included) of `samples` not cached yet;
        returns how many inputs were encoded. Loads the teacher when there is anything to do."""
        queries = list(dict.fromkeys(s.query for s in samples if s.query not in self.queries))
        targets = {t.key: t for s in samples for t in [s.target, *s.hard_negatives[:num_hard_negatives]]
                   if t.key not in self.targets}
        if not queries and not targets:
            return 0
        start = time.time()
        teacher.load(device)
        settings = teacher.settings
        self.queries.update(zip(queries, teacher.encode(queries, [None] * len(queries), settings.query_instruction)))
        found = list(targets.values())
        encoded = teacher.encode([t.text for t in found], [t.visual for t in found], settings.target_instruction)
        self.targets.update(zip(targets, encoded))
        self.seconds += time.time() - start
        return len(queries) + len(found)

    def lookup(self, samples: list, num_hard_negatives: int) -> TeacherBatch:
        """The teacher rows of a batch, laid out as MRLCollator lays out the student's: queries in
        sample order; targets [every positive, then each sample's first k hard negatives]."""
        k = num_hard_negatives
        targets = [s.target for s in samples] + [n for s in samples for n in s.hard_negatives[:k]]
        return TeacherBatch(torch.stack([self.queries[s.query] for s in samples]),
                            torch.stack([self.targets[t.key] for t in targets]))


class WithTeacher:
    """A collator plus the teacher's cached rows of the same batch ("teacher_queries",
    "teacher_targets"), checked against the student's row counts."""

    def __init__(self, collate, cache: TeacherCache, num_hard_negatives: int):
        self.collate, self.cache, self.k = collate, cache, num_hard_negatives

    def __call__(self, samples: list) -> dict:
        batch = self.collate(samples)
        rows = self.cache.lookup(samples, self.k)
        if rows.queries.shape[0] != batch["query_input_ids"].shape[0] or \
                rows.targets.shape[0] != batch["target_input_ids"].shape[0]:
            raise RuntimeError("the teacher's rows do not match the batch's: TeacherCache.lookup must lay "
                               "targets out as MRLCollator does")
        batch["teacher_queries"], batch["teacher_targets"] = rows.queries, rows.targets
        return batch


def untaught_metrics(run: str) -> dict:
    """The test metrics of a finished run of the student without distillation (`untaught_run`)."""
    path = Path(run).expanduser()
    path = path.parent if path.name == "model" else path
    metrics = read_json(path / "metrics.json", dict, "train the student again with distillation_alpha=0",
                        default=None)
    if metrics is None:
        raise InputError(f"objective.options.untaught_run={run}: no finished run there ({path / 'metrics.json'} "
                         "is missing); train the student with distillation_alpha=0 first")
    if metrics.get("objective") != "mrl" or not isinstance(metrics.get("finetuned"), dict):
        raise InputError(f"objective.options.untaught_run={run}: not a finished mrl run (its metrics.json has "
                         "no mrl test metrics)")
    return metrics["finetuned"]
