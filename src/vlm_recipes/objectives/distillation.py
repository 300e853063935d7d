"""Knowledge distillation for `mrl`: a teacher embedder's in-batch similarities taught to the student.

Loss of a distilled step (objectives/mrl.py), alpha = `distillation_alpha`:

    L = (1 - alpha) * L_MRL + alpha * sum_d w_d * L_KD(d)

L_MRL is the Matryoshka InfoNCE (`matryoshka_info_nce`), w_d its per-dim weights. L_KD(d) scores the
SAME two in-batch matrices as the InfoNCE, hard negatives included and in the same order:
  text -> target:  query i against the candidates [all positives, then all hard negatives]  (B, C)
  target -> text:  positive i against all queries                                           (B, W*B)
(W processes: candidates and queries gathered from every process, the teacher's the same way).
The teacher's matrix T comes from its own full-dim normalised embeddings, computed once (eval mode,
no gradient: models/teacher.py caches them for the whole training split); the student's S_d from
its embeddings truncated to dim d and re-normalised. Both are cosines. With tau =
`distillation_temperature`, per row and averaged over the B rows and the two directions:

  kl  (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network", applied to
      in-batch similarity distributions as in contrastive distillation, e.g. CompRess, Abbasi
      Koohpayegani et al. 2020, and sentence-transformers' DistillKLDivLoss):
        L_KD = KL( softmax(T / tau) || softmax(S_d / tau) )
  mse (regression of the similarity matrix: sentence-transformers' MSELoss / MarginMSE, Hofstaetter
      et al. 2020, on scores; "similarity-preserving" distillation, Tung & Mori 2019):
        L_KD = mean_j (S_d[i, j] - T[i, j])^2          (cosines; tau does not enter)

Why no Hinton tau^2 factor: Hinton's logits are the model's own and tau > 1 softens them, so the
soft term's gradient shrinks as 1/tau^2 and tau^2 restores it. Here the "logits" are cosines divided
by tau < 1 (0.1, as the InfoNCE's temperature): d L_KD / d S_d[i, j] = (p_student - p_teacher) / tau,
the same scale as the InfoNCE's (p - onehot) / temperature. A tau^2 factor would shrink the taught
term 100-fold at tau = 0.1 and alpha would only slow the contrastive training down (DECISIONS D25).
The mse term is on the cosines themselves: scaled by 1/tau^2 (the squared error of the logits) it
swamped the InfoNCE from the first step: the shipped base, never trained as an embedder, scores
every query-target pair at cosine 0.76 (std 0.06) where the teacher scores non-matching pairs at
0.00, ((0.76 - 0) / 0.1)^2 = 58 per entry; on mrl-distill that student collapsed to chance (t2i
R@1 0.002 at alpha 0.5, 0.014 at alpha 0.1; DECISIONS D25).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.distributed import in_batch_layout
from ..models.embedding import truncate
from ..models.teacher import TeacherBatch


def teacher_similarities(teacher: TeacherBatch, gather: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's (text -> target (B, C), target -> text (B, W*B)) cosine matrices at its full dim."""
    queries, targets = teacher.queries.float(), teacher.targets.float()
    positives, candidates, all_queries = in_batch_layout(queries, targets, gather, with_grad=False)
    return queries @ candidates.T, positives @ all_queries.T


def kd_term(student: torch.Tensor, teacher: torch.Tensor, kind: str, tau: float) -> torch.Tensor:
    """One direction's distillation term, averaged over rows: student, teacher (B, N) cosines."""
    if kind == "kl":
        target = F.log_softmax(teacher / tau, dim=-1)
        return F.kl_div(F.log_softmax(student / tau, dim=-1), target, log_target=True, reduction="batchmean")
    return (student - teacher).pow(2).mean()  # cosines, unscaled: tau does not enter (module docstring)


def distillation_loss(queries: torch.Tensor, targets: torch.Tensor, teacher: TeacherBatch,
                      dims: tuple[int, ...], weights: tuple[float, ...], kind: str, tau: float,
                      gather: bool = True) -> torch.Tensor:
    """sum_d w_d * L_KD(d) (module docstring) for this process's B queries; queries (B, H) and
    targets ((1 + k) * B, H) are the student's full embeddings, laid out as `teacher`'s rows."""
    if teacher.queries.shape[0] != queries.shape[0] or teacher.targets.shape[0] != targets.shape[0]:
        raise ValueError(f"teacher rows {tuple(teacher.queries.shape)}/{tuple(teacher.targets.shape)} do not "
                         f"match the batch's {tuple(queries.shape)}/{tuple(targets.shape)}")
    teacher_t2c, teacher_c2t = teacher_similarities(teacher, gather)
    positives, candidates, all_queries = in_batch_layout(queries, targets, gather, with_grad=True)
    total = queries.new_zeros((), dtype=torch.float32)
    for dim, weight in zip(dims, weights):
        q, p = truncate(queries, dim), truncate(positives, dim)  # (B, dim), re-normalised
        text_to_target = kd_term(q @ truncate(candidates, dim).T, teacher_t2c, kind, tau)
        target_to_text = kd_term(p @ truncate(all_queries, dim).T, teacher_c2t, kind, tau)
        total = total + weight * (text_to_target + target_to_text) / 2
    return total
