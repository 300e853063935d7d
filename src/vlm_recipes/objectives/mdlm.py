"""Masked-diffusion (MDLM / LLaDA) fine-tuning of the language model; answers by iterative unmasking.

Training, per sample: draw t ~ U(eps, 1) (stratified over the batch); mask each answer token
independently with probability t (replace it by `<|mask|>`); the language model, attending
BIDIRECTIONALLY (models/attention.py), predicts the original tokens; the loss is cross-entropy on
the masked positions weighted by 1/t. The noise is drawn in the collator, so a batch is a fixed,
inspectable object and `compute_loss` is a pure function of it.

Normalisation (LLaDA's SFT loss, the MDLM NELBO per token): per sample, the weighted sum over
masked positions is divided by the number of maskable tokens of that sample (its answer
canvas), then the batch is averaged over samples:
    loss = mean_i [ (1 / L_i) * sum_{j masked in i} CE_ij / t_i ]
which is an unbiased estimate of the per-token negative ELBO. A batch's loss is the mean of its
rows' losses, so accumulated micro-batches average like one big batch; with the default fixed
canvas every L_i is the same and this also equals MDLM's division by all maskable tokens.

Logits alignment (`shift_logits`, default on): token i is predicted by the logits at position
i - 1, as the autoregressive base was trained to (Dream's way of adapting an AR checkpoint); off,
by the logits at position i (LLaDA). The masked tokens and the loss are the same either way.

The answer canvas: answer + <|im_end|>, filled with more <|im_end|> up to `canvas_length`
(LLaDA's EOS padding, chosen deliberately): decoding writes into a fixed-length canvas, so the
model must learn what comes after the answer; the text is cut at the first <|im_end|>. The fill
is part of the answer and is masked and trained like it. Batch padding (attention 0) is never
masked, attended or trained. Prompt and image tokens are never masked when `mask_prompt_loss`
is on (the default); image and vision-marker tokens never are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import MDLMOptions
from ..data.chat import user_messages
from ..data.messages import ChatSample, encode_prompts
from ..errors import InputError
from ..evaluation.answers import AnswerEvaluator
from ..evaluation.diffusion_decoding import diffusion_generate, with_canvas
from ..models.attention import bidirectional_attention
from ..models.tiny import MASK_TOKEN
from .base import Objective
from .grounding import answer_for

# --- the noising process and the loss (pure functions, tested against the formula) ---------------

def sample_t(batch: int, eps: float, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch,) masking levels t ~ U(eps, 1), stratified: one per 1/batch-wide slice of [0, 1) with a
    shared random offset (MDLM's low-discrepancy sampler). Each t is still uniform; the batch covers
    the whole range, which lowers the variance of the 1/t-weighted loss."""
    u = (torch.arange(batch, device=device) + torch.rand(1, device=device, generator=generator)) / batch
    u = u[torch.randperm(batch, device=device, generator=generator)]  # no link between row and level
    return eps + (1 - eps) * u


def mask_tokens(input_ids: torch.Tensor, maskable: torch.Tensor, t: torch.Tensor, mask_id: int,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each maskable token is masked independently with its row's probability t.

    input_ids, maskable: (batch, seq); t: (batch,) -> (noisy input_ids, masked) both (batch, seq).
    """
    draw = torch.rand(input_ids.shape, device=input_ids.device, generator=generator)
    masked = maskable & (draw < t[:, None])
    return input_ids.masked_fill(masked, mask_id), masked


def mdlm_loss(logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor, maskable: torch.Tensor,
              t: torch.Tensor) -> torch.Tensor:
    """mean_i (1/L_i) sum_{j masked} CE(logits_ij, targets_ij) / t_i  (see the module docstring).

    logits (batch, seq, vocab); targets, masked, maskable (batch, seq); t (batch,).
    """
    rows, cols = masked.nonzero(as_tuple=True)  # only masked positions need the softmax
    ce = F.cross_entropy(logits[rows, cols].float(), targets[rows, cols], reduction="none")  # (n_masked,)
    per_token_weight = 1.0 / (t[rows] * maskable.sum(1).clamp(min=1)[rows])
    return (ce * per_token_weight).sum() / targets.shape[0]


# --- samples and batches ---------------------------------------------------------------------------

def as_chat(sample, family, data, processor) -> ChatSample:
    """Grounding rows in message form: one image, the sample's prompt, the family's answer with its
    objects (`data`: the recipe's DataConfig, whose prompt and label the loader gave the rows)."""
    if isinstance(sample, ChatSample):
        return sample
    return ChatSample([sample.image], user_messages(sample.prompt), answer_for(sample, family, None, processor),
                      sample.image_id)


def encode_training_batch(processor, samples: list[ChatSample], options: MDLMOptions,
                          generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """A noised diffusion batch: left-padded prompt + answer canvas (always the last `canvas_length`
    columns), with a fresh t per sample and its masked tokens.

    Returns the model inputs (input_ids noised), t (batch,), and, ALIGNED WITH THE LOGITS (column c
    is what the logits at column c must predict: token c, or token c + 1 with `shift_logits`):
    targets (batch, seq) clean ids, maskable / masked (batch, seq) bool.
    """
    tokenizer = processor.tokenizer
    prompts = encode_prompts(processor, samples)  # (batch, P)
    canvas = torch.full((len(samples), options.canvas_length), tokenizer.eos_token_id, dtype=torch.long)
    for row, sample in enumerate(samples):
        answer = tokenizer(sample.answer, add_special_tokens=False)["input_ids"]
        if len(answer) + 1 > options.canvas_length:
            raise InputError(f"the answer of sample {sample.image_id!r} has {len(answer)} tokens + <|im_end|> > "
                             f"objective.options.canvas_length={options.canvas_length}: raise canvas_length "
                             "(never truncated)")
        canvas[row, :len(answer)] = torch.tensor(answer)  # the rest stays <|im_end|>: EOS fill
    batch = with_canvas(prompts, canvas)
    longest = int(batch["attention_mask"].sum(1).max())
    if longest > options.max_length:
        raise InputError(f"a training sequence has {longest} tokens > objective.options.max_length="
                         f"{options.max_length}: raise it or lower model.max_pixels (never truncated)")
    maskable = maskable_positions(batch, tokenizer, options)
    t = sample_t(len(samples), options.eps, generator=generator)
    noisy, masked = mask_tokens(batch["input_ids"], maskable, t, tokenizer.convert_tokens_to_ids(MASK_TOKEN),
                                generator)
    shift = int(options.shift_logits)
    return dict(batch, input_ids=noisy, t=t, targets=_to_logit_columns(batch["input_ids"], shift),
                maskable=_to_logit_columns(maskable, shift), masked=_to_logit_columns(masked, shift))


def _to_logit_columns(x: torch.Tensor, shift: int) -> torch.Tensor:
    """(batch, seq) per token -> per logits column: the token at c is predicted at c - shift."""
    return torch.cat([x[:, shift:], torch.zeros_like(x[:, :shift])], 1)


def maskable_positions(batch: dict[str, torch.Tensor], tokenizer, options: MDLMOptions) -> torch.Tensor:
    """(batch, seq) bool: the answer canvas; with mask_prompt_loss off also the prompt's text tokens.
    Never padding, image tokens or the vision markers around them."""
    attended = batch["attention_mask"] == 1
    maskable = torch.zeros_like(attended)
    maskable[:, -options.canvas_length:] = True
    if not options.mask_prompt_loss:
        vision = torch.tensor(tokenizer.convert_tokens_to_ids(
            ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]))
        maskable |= ~torch.isin(batch["input_ids"], vision)
    maskable &= attended
    if options.shift_logits:  # a token is predicted from its left neighbour, which must exist
        maskable[:, 1:] &= attended[:, :-1]
        maskable[:, 0] = False
    return maskable


def ensure_mask_token(model, processor) -> int:
    """The id of `<|mask|>`, adding it to the tokenizer (and a row to the embeddings) if missing.

    Real Qwen checkpoints have spare embedding rows beyond their tokenizer, so the new id lands in
    an existing row: no resize, and a LoRA adapter plus the saved tokenizer reload consistently."""
    tokenizer = processor.tokenizer
    if MASK_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([MASK_TOKEN], special_tokens=True)
    mask_id = tokenizer.convert_tokens_to_ids(MASK_TOKEN)
    if mask_id >= model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return mask_id


# --- the objective -----------------------------------------------------------------------------------

class MDLM(Objective):
    name = "mdlm"
    data_kind = "chat"

    def prepare_model(self, model):
        ensure_mask_token(model, self.processor)
        return model

    def collate(self, samples):
        chats = [as_chat(s, self.family, self.recipe.data, self.processor) for s in samples]
        return encode_training_batch(self.processor, chats, self.options)

    def compute_loss(self, model, inputs, num_items_in_batch=None):
        # The batch has no `labels`, so Trainer passes num_items_in_batch=None and divides this
        # per-sample mean by the accumulation steps: accumulated batches average like one big batch.
        inputs = dict(inputs)
        targets, masked, maskable, t = (inputs.pop(k) for k in ("targets", "masked", "maskable", "t"))
        # logits only from the first maskable column on (the canvas, by default): (batch, keep, vocab)
        keep = maskable.shape[1] - int(maskable.int().argmax(1).min())
        with bidirectional_attention(model):
            logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
        return mdlm_loss(logits, targets[:, -keep:], masked[:, -keep:], maskable[:, -keep:], t)

    def evaluator(self):
        return AnswerEvaluator(self.generate, self.processor, self.family, self.recipe.eval.num_plot,
                               self.recipe.eval.batch_size)

    def generate(self, model, samples, desc):
        """Answers by iterative unmasking, `eval.batch_size` canvases at a time."""
        options, size = self.options, self.recipe.eval.batch_size
        texts, scores = [], []
        for start in tqdm(range(0, len(samples), size), desc=desc, unit="batch"):
            chats = [as_chat(s, self.family, self.recipe.data, self.processor) for s in samples[start:start + size]]
            answers, confidences = diffusion_generate(
                model, self.processor, chats, options.canvas_length, options.decode_steps, options.decode_block,
                options.remasking, options.temperature, shift_logits=options.shift_logits)
            texts += answers
            scores += confidences
        return texts, scores


OBJECTIVE_CLASS = MDLM
