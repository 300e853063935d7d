"""GRPO on the grounding task: TRL's GRPOTrainer, rewarded by the answer's IoU and format.

Group Relative Policy Optimization (Shao et al., 2024, DeepSeekMath) samples `num_generations`
answers per prompt, scores each with rule-based rewards (objectives/rewards.py) and pushes the
policy towards the answers that beat their group's mean: no value model and no learned reward.
VLM-R1 (Shen et al., 2025) applies it to Qwen2.5-VL grounding with exactly these two rewards, IoU
and format. The loop, sampling, clipping, KL and loss aggregation are TRL's; this module supplies
what is specific to the task: the prompts as a dataset, the rewards, and what to watch for reward
hacking (the fraction of answers that parse, and the predicted box's area against the true one).

Evaluation is SFT's (greedy answers scored by IoU), so a GRPO stage sits in the same table as the
SFT stage before it; `sft` and `grpo` may be chained in one recipe (their specs' `shares_data_with`, config/options.py).
"""

from __future__ import annotations

import copy
import statistics

from datasets import Dataset
from transformers import TrainerCallback

from ..boxes import is_empty_answer
from ..data.chat import user_messages
from ..data.index import every_single_box
from ..evaluation.generation import answer_boxes, answer_texts, stop_token_ids
from . import rewards
from .grounding import answer_for
from .sft import SFT

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


class GRPO(SFT):
    name = "grpo"
    loss_is_positive = False  # the clipped policy-gradient loss is 0 when a group's rewards tie

    @property
    def trainer_class(self):
        from trl import GRPOTrainer

        return GRPOTrainer

    @property
    def arguments_class(self):
        from trl import GRPOConfig

        return GRPOConfig

    def samples_per_step(self, train) -> int:
        """Prompts of one micro-batch: a step's prompts_per_step, spread over the accumulation steps."""
        return max(1, self.options.prompts_per_step // train.gradient_accumulation_steps)

    def trainer_arguments(self, train) -> dict:
        """TRL generates once per optimizer step (steps_per_generation = gradient_accumulation_steps) a
        batch of per_device_train_batch_size x accumulation answers per process: the micro-batch is
        a step's prompts_per_step x num_generations answers over the accumulation steps, so that a step
        trains on prompts_per_step prompts whatever the accumulation (issue 31; config checks that it
        divides)."""
        o = self.options
        answers = o.prompts_per_step * o.num_generations
        return dict(num_generations=o.num_generations,
                    per_device_train_batch_size=answers // train.gradient_accumulation_steps,
                    per_device_eval_batch_size=o.num_generations, temperature=o.temperature,
                    max_completion_length=o.max_completion_length, beta=o.beta, epsilon=o.epsilon,
                    loss_type=o.loss_type, scale_rewards=o.scale_rewards,
                    reward_weights=[o.iou_weight, o.format_weight, o.length_weight], log_completions=False,
                    generation_kwargs={"suppress_tokens": self.vision_token_ids()})

    def vision_token_ids(self) -> list[int]:
        """Tokens that mark image or video positions, kept out of sampled answers (TRL suppresses only
        the image-pad token). A precaution: an answer is text, and no run so far has been seen to
        sample one of these; the crash first blamed on them was the padding one (`left_padding`)."""
        tokenizer = self.processor.tokenizer
        ids = [tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS]
        return [i for i in ids if i is not None and i != tokenizer.unk_token_id]

    def trainer_inputs(self, train: list, val: list) -> dict:
        sets = not every_single_box(train)
        return {"train_dataset": self.prompts(train), "eval_dataset": self.prompts(val) if val else None,
                "reward_funcs": self.set_reward_functions() if sets else self.reward_functions(),
                "processing_class": left_padding(self.processor)}

    def prepare_model(self, model):
        """Remember where answers end (the generation config's end tokens and the tokenizer's), so that
        the rewards cut answers where TRL's sampling and the evaluation stop them."""
        self.stop_ids = stop_token_ids(model.generation_config, self.processor.tokenizer)
        return super().prepare_model(model)

    def prepare_trainer(self, trainer) -> None:
        trainer.add_callback(DropReferenceAdapter(trainer.model))

    def prompts(self, samples: list) -> Dataset:
        """GRPOTrainer's dataset: a conversational prompt and the image per row, plus what the rewards
        read (TRL passes every other column to them): the true box, the image size and the length of
        the true answer in tokens; for sets, every true box and the asked label. The table holds only
        row numbers and builds each row when it is read, so the images are never encoded into it
        (3,200 PNGs cost over a minute on 2 cores)."""
        tokenizer = self.processor.tokenizer
        reference_tokens = [len(tokenizer(answer_for(s, self.family, None, self.processor))["input_ids"]) + 1
                            for s in samples]  # + the <|im_end|> that closes it

        def rows(batch: dict) -> dict:
            picked = [samples[i] for i in batch["row"]]
            return {"prompt": [user_messages(s.prompt) for s in picked], "image": [s.image for s in picked],
                    "box": [list(s.objects[0][1]) if s.objects else [] for s in picked],
                    "boxes": [[list(b) for b in s.boxes] for s in picked], "label": [s.label for s in picked],
                    "width": [s.width for s in picked],
                    "height": [s.height for s in picked],
                    "reference_tokens": [reference_tokens[i] for i in batch["row"]]}

        table = Dataset.from_dict({"row": list(range(len(samples)))})
        table.set_transform(rows)
        return table

    def reward_functions(self) -> list:
        """TRL reward callables, in the order of `reward_weights`; TRL logs each as rewards/<name>/mean."""
        family, processor, label = self.family, self.processor, self.recipe.data.label
        max_tokens = self.options.max_completion_length

        def parsed(completion_ids, width, height):
            texts = answer_texts(processor.tokenizer, completion_ids, getattr(self, "stop_ids", None))
            return [answer_boxes(t, w, h, family, processor) for t, w, h in zip(texts, width, height)]

        def iou_reward(completion_ids, box, width, height, log_metric=None, **_):
            answers = parsed(completion_ids, width, height)
            if log_metric is not None:
                for name, value in watch(answers, box).items():
                    log_metric(name, value)
            return [rewards.iou_reward(a, tuple(b)) for a, b in zip(answers, box)]

        def format_reward(completion_ids, width, height, **_):
            return [rewards.format_reward(a, label) for a in parsed(completion_ids, width, height)]

        def length_penalty(completion_ids, reference_tokens, **_):
            return [rewards.length_penalty(len(ids), ref, max_tokens) for ids, ref in zip(completion_ids, reference_tokens)]

        return [iou_reward, format_reward, length_penalty]

    def set_reward_functions(self) -> list:
        """The rewards for sets of boxes (several objects, referring expressions, negatives), in the
        same order and under the same weights: matching (iou_weight), format, length."""
        family, processor = self.family, self.processor
        max_tokens = self.options.max_completion_length

        def read(completion_ids, width, height):
            texts = answer_texts(processor.tokenizer, completion_ids)
            return texts, [answer_boxes(t, w, h, family, processor) for t, w, h in zip(texts, width, height)]

        def match_reward(completion_ids, boxes, width, height, log_metric=None, **_):
            _, answers = read(completion_ids, width, height)
            if log_metric is not None:
                for name, value in watch_sets(answers, boxes).items():
                    log_metric(name, value)
            return [rewards.match_reward(a, [tuple(b) for b in t]) for a, t in zip(answers, boxes)]

        def format_reward(completion_ids, label, width, height, **_):
            texts, answers = read(completion_ids, width, height)
            return [rewards.set_format_reward(a, is_empty_answer(t, family), asked)
                    for t, a, asked in zip(texts, answers, label)]

        def length_penalty(completion_ids, reference_tokens, **_):
            return [rewards.length_penalty(len(ids), ref, max_tokens) for ids, ref in zip(completion_ids, reference_tokens)]

        return [match_reward, format_reward, length_penalty]


def left_padding(processor):
    """A copy of the processor whose tokenizer pads on the left, as GRPOTrainer expects: it builds the
    prompts' image-slot mask (`mm_token_type_ids`) with the tokenizer's own padding side but pads the
    prompt ids on the left, so with right padding the two disagree on any batch whose images differ
    in size, and Qwen-VL's rotary index fails. TRL loads its own processor that way; ours pads on
    the right for training batches, and evaluation sets the side per call, so GRPO gets its own copy."""
    processor = copy.deepcopy(processor)
    processor.tokenizer.padding_side = "left"
    return processor


def watch(answers: list, targets: list) -> dict[str, float]:
    """Reward-hacking signals for one batch of answers: the fraction with a box, boxes per answer,
    and the mean predicted area over the true area (1 = boxes of the right size; a policy that
    games IoU with ever larger boxes drifts up)."""
    with_box = [(a, t) for a, t in zip(answers, targets) if a]
    ratios = [rewards.box_area(a[0][1]) / max(rewards.box_area(tuple(t)), 1e-9) for a, t in with_box]
    return {"watch/parsed": len(with_box) / max(len(answers), 1),
            "watch/boxes_per_answer": statistics.fmean(len(a) for a in answers) if answers else 0.0,
            "watch/area_ratio": statistics.fmean(ratios) if ratios else 0.0}


def watch_sets(answers: list, targets: list) -> dict[str, float]:
    """Reward-hacking signals on sets: boxes per answer against true boxes per prompt (a policy that
    games the matching with spare boxes drifts above), and the fraction answered empty."""
    return {"watch/boxes_per_answer": statistics.fmean(len(a) for a in answers) if answers else 0.0,
            "watch/true_boxes": statistics.fmean(len(t) for t in targets) if targets else 0.0,
            "watch/empty": statistics.fmean(not a for a in answers) if answers else 0.0}


class DropReferenceAdapter(TrainerCallback):
    """With beta > 0 and LoRA, GRPOTrainer keeps the starting adapter as a frozen "ref" adapter for the
    KL term; it is not part of the trained model, so it is removed before the stage is saved."""

    def __init__(self, model):
        self.model = model

    def on_train_end(self, args, state, control, **kwargs):
        if "ref" in getattr(self.model, "peft_config", {}):
            self.model.delete_adapter("ref")


OBJECTIVE_CLASS = GRPO
