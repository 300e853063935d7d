"""Supervised fine-tuning on grounding answers: next-token loss on the assistant's box (r1-r4).

The loss is the model's own (labels set by the collator, answer tokens only); evaluation is greedy
generation scored by IoU.
"""

from __future__ import annotations

from ..data.chat import encode_for_training
from ..evaluation.answers import AnswerEvaluator
from ..evaluation.generation import generate_answers
from .base import Objective
from .grounding import answer_for


def token_mean_loss(outputs, labels, num_items_in_batch=None):
    """Next-token cross-entropy summed over the batch's answer tokens, divided by the answer tokens of
    the whole step (every accumulated micro-batch, every process; Trainer counts them). Qwen-VL
    classes declare `accepts_loss_kwargs = False`, so their own loss is a per-micro-batch mean and
    2 processes x 4 rows would train on the mean of two means, not on the 8 rows' mean (D20)."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    return ForCausalLMLoss(outputs.logits, labels, outputs.logits.shape[-1], num_items_in_batch=num_items_in_batch)


class SFT(Objective):
    name = "sft"
    data_kind = "detection"
    compute_loss_func = staticmethod(token_mean_loss)

    def collate(self, samples):
        answers = [answer_for(s, self.family, None, self.processor) for s in samples]
        return encode_for_training(self.processor, [s.image for s in samples], [s.prompt for s in samples],
                                   answers, loss_on=self.options.loss_on, max_length=self.options.max_length)

    def evaluator(self):
        return AnswerEvaluator(self.generate, self.processor, self.family, self.recipe.eval.num_plot,
                               self.recipe.eval.batch_size)

    def generate(self, model, samples, desc):
        evaluation = self.recipe.eval
        return generate_answers(model, self.processor, [s.image for s in samples], [s.prompt for s in samples],
                                evaluation.batch_size, evaluation.max_new_tokens, desc)


OBJECTIVE_CLASS = SFT
