"""GRPO's rewards for a grounding answer: named pure functions of one parsed answer and its sample.

An answer is read exactly as evaluation reads it: `evaluation.generation.answer_boxes` parses it in
the family's convention at the processor's resize, and IoU is `evaluation.detection.box_iou`.
So the reward the policy climbs is the metric the report shows (VLM-R1's accuracy reward), and a
change to the parser changes both together.

- `iou_reward`: IoU of the first parsed box with the true box; 0 for an answer without a box.
- `format_reward`: 1 when the answer parses into exactly one box labelled as asked, else 0
  (VLM-R1's format reward checks the answer's shape the same way).
- `length_penalty`: minus the tokens beyond the true answer's own length, as a fraction of the
  longest allowed answer; 0 for an answer no longer than the reference.

Sets of boxes (several objects, referring expressions, negatives; VLM-R1's "odLength" idea):

- `match_reward`: summed IoU of the Hungarian-matched pairs over max(predicted, true) boxes: the
  mean matched IoU where every extra box and every missing box counts 0, so duplicates, a box
  covering everything and spare boxes all lose; 1 for the empty answer on a negative, 0 for it
  on a positive.
- `set_format_reward`: 1 for a list of boxes all labelled as asked, or the family's explicit empty
  answer; 0 for anything unreadable.

The recipe's weights (`objective.options.*_weight`) combine them; TRL's GRPOTrainer sums them.
"""

from __future__ import annotations

from ..boxes import Box
from ..evaluation.detection import box_iou, match_boxes


def iou_reward(boxes: list[tuple[str, Box]], target: Box) -> float:
    return box_iou(boxes[0][1], target) if boxes else 0.0


def format_reward(boxes: list[tuple[str, Box]], label: str) -> float:
    return float(len(boxes) == 1 and boxes[0][0].strip().lower() == label.strip().lower())


def match_reward(boxes: list[tuple[str, Box]], targets: list[Box]) -> float:
    predicted = [box for _, box in boxes]
    if not predicted and not targets:
        return 1.0
    matched = sum(iou for _, _, iou in match_boxes(predicted, targets))
    return matched / max(len(predicted), len(targets))


def set_format_reward(boxes: list[tuple[str, Box]], explicit_empty: bool, label: str) -> float:
    if not boxes:
        return float(explicit_empty)
    return float(all(own.strip().lower() == label.strip().lower() for own, _ in boxes))


def length_penalty(num_tokens: int, reference_tokens: int, max_tokens: int) -> float:
    return -max(0, num_tokens - reference_tokens) / max_tokens


def box_area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])
