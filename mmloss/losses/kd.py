"""Knowledge-distillation loss: KL divergence of temperature-softened logits.

Hinton et al., "Distilling the Knowledge in a Neural Network", 2015,
https://arxiv.org/abs/1503.02531 (used by LD: arXiv 2102.12252).

With ``t = softmax(s / T)`` (the teacher, detached by default) and ``log q =
log_softmax(x / T)`` (the student), per row over its ``C`` entries::

    loss_i = T^2 / C * sum_j t_ij * (log t_ij - log q_ij)

(mean over the classes times ``T^2``, as MMDetection 3.3). Shapes: student
and teacher logits (N, C) or (N, C, d1, ...) (the softmax and the mean run
over dim 1), one loss per row (N,) or (N, d1, ...).

The gradient is ``d loss_i / d x_ij = T / C * (q_ij - t_ij)``. The fast
path (2-D logits, a detached teacher) runs through
:class:`mmloss.engine.functions.GradientInBackward`: forward computes the
weighted value (:func:`kl_div_distill_value`, the ``'mean'``/``'sum'``
reduction fused in), the graph keeps only the student and teacher logits
(references: as much as MMDetection's two ``N x C`` tensors), and
backward computes ``q - t`` from them (:func:`kl_div_distill_grad`). On
the CPU both take the softmaxes from unshifted exponentials and their row
sums where those are in range (checked on the host), else, like every
accelerator, from log-softmax ops. For a backward with
``create_graph=True`` the plain formula (:func:`kl_div_distill_rows`) is
differentiated instead.
"""
import functools
from numbers import Real
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_same_shape, check_tensor, check_weight_shape
from ..engine import dispatch
from ..engine.functions import gradient_in_backward
from ..errors import LossTypeError, LossValueError
from ..precision import compute_dtype, restore_loss, to_dtype
from ..reduction import Reduction
from ..registry import MODELS
from ..typing_utils import AvgFactor, OptStr, OptTensor
from .base import BaseLoss
from .cross_entropy_kernels import sums_in_range
from .focal_kernels import row_blocks

__all__ = [
    'knowledge_distillation_kl_div_loss', 'KnowledgeDistillationKLDivLoss'
]


def kl_div_distill_rows(pred: Tensor, soft_label: Tensor, T: float,
                        detach_target: bool = True) -> Tensor:
    """The plain row losses ``T^2 * mean_j KL`` by ``F.kl_div`` (autograd,
    any order; any-dim inputs), float32 at least."""
    dtype = compute_dtype(pred)
    target = F.softmax(to_dtype(soft_label, dtype) / T, dim=1)
    if detach_target:
        target = target.detach()
    return F.kl_div(F.log_softmax(to_dtype(pred, dtype) / T, dim=1), target,
                    reduction='none').mean(1) * (T * T)


def _scaled_log_softmax(logits: Tensor, T: float, fn=torch.log_softmax
                        ) -> Tensor:
    """``fn(logits / T)`` over dim 1: ``log_softmax`` or ``softmax``."""
    return fn(logits * (1 / T), 1)


def _kl_rows_log_softmax(student: Tensor, teacher: Tensor,
                         T: float) -> Tensor:
    """One block's ``KL * T`` by two log-softmaxes (any logits; a zero
    teacher probability, from a ``-inf`` logit, adds 0 as in
    ``F.kl_div``)."""
    log_target = _scaled_log_softmax(teacher, T)
    target = log_target.exp()
    log_target.clamp_(min=torch.finfo(log_target.dtype).min)
    return log_target.sub_(_scaled_log_softmax(student, T)).mul_(
        target).sum(1).mul_(T)


def _exponentials(student: Tensor, teacher: Tensor, T: float,
                  scratch: Tensor) -> Optional[Tensor]:
    """``exp(x / T)`` and ``exp(s / T)`` into the (2, n, C) ``scratch`` and
    their (2, n) row sums ``S_s, S_t``, or ``None`` where the sums leave
    :func:`~mmloss.losses.cross_entropy_kernels.sums_in_range` (both
    exponentials and both row sums in one op each)."""
    torch.mul(student, 1 / T, out=scratch[0])
    torch.mul(teacher, 1 / T, out=scratch[1])
    sums = scratch.exp_().sum(2)
    return sums if sums_in_range(sums) else None


def _kl_rows_unshifted(student: Tensor, teacher: Tensor, T: float,
                       scratch: Tensor) -> Optional[Tensor]:
    """One block's ``KL * T`` from unshifted exponentials
    (:func:`_exponentials`; ``None`` where their row sums are out of
    range).

    With ``d_j = (s_j - x_j) / T`` and ``k = logsumexp(s / T) -
    logsumexp(x / T) = log(S_t / S_s)``, ``KL = sum_j t_j (d_j - k)``:
    ``log t_j - log q_j`` as one difference, so that logits a constant
    apart lose no digits. A zero teacher probability (a ``-inf`` logit)
    adds 0 (the difference is clamped to a finite number).
    """
    sums = _exponentials(student, teacher, T, scratch)
    if sums is None:
        return None
    student_sum, teacher_sum = sums
    offset = torch.div(teacher_sum, student_sum).log_().mul_(T)
    # T (d - k), over the student's exponentials (no longer needed)
    centred = torch.sub(teacher, student, out=scratch[0]).sub_(
        offset.unsqueeze(1)).clamp_(min=torch.finfo(student.dtype).min)
    return centred.mul_(scratch[1]).sum(1).div_(teacher_sum)


def _blocks_of(pred: Tensor, soft_label: Tensor, dtype: torch.dtype):
    """``(start, stop, student, teacher, scratch)`` per row block
    (:func:`~mmloss.losses.focal_kernels.row_blocks`), the logits in
    ``dtype`` and a (2, n, C) scratch buffer shared by the blocks."""
    spans = row_blocks(pred)
    scratch = pred.new_empty((2, spans[0][1] - spans[0][0], pred.size(1)),
                             dtype=dtype)
    for start, stop in spans:
        if len(spans) == 1:
            yield start, stop, to_dtype(pred, dtype), to_dtype(
                soft_label, dtype), scratch
        else:
            yield start, stop, to_dtype(pred[start:stop], dtype), to_dtype(
                soft_label[start:stop], dtype), scratch[:, :stop - start]


def kl_div_distill_value(pred: Tensor, soft_label: Tensor,
                         row_weight: Optional[Tensor], *, T: float,
                         reduce_sum: bool):
    """Row-wise ``T^2 / C * KL(softmax(s/T) || softmax(x/T))`` of 2-D
    logits (or, weighted by the (N,) ``row_weight``, their sum), the value
    kernel of :class:`~mmloss.engine.functions.GradientInBackward`.

    Block by block, each by :func:`_kl_rows_unshifted` where the CPU
    kernels may run (:func:`mmloss.engine.dispatch.cpu_kernels`: its row
    sums are checked on the host) and its row sums are in range, else by
    :func:`_kl_rows_log_softmax` (one fused op per softmax, no host read).
    Float32 at least; nothing kept for backward but the inputs.
    """
    dtype = compute_dtype(pred)
    unshifted = dispatch.cpu_kernels(pred)
    rows = None
    for start, stop, student, teacher, scratch in _blocks_of(
            pred, soft_label, dtype):
        part = _kl_rows_unshifted(student, teacher, T, scratch) \
            if unshifted else None
        if part is None:
            part = _kl_rows_log_softmax(student, teacher, T)
        if stop - start == pred.size(0):
            rows = part
        else:
            if rows is None:
                rows = pred.new_empty(pred.size(0), dtype=dtype)
            rows[start:stop] = part
    factor = T / pred.size(1)
    if row_weight is not None:
        rows = rows * row_weight
    if reduce_sum:
        return rows.sum() * factor, ()
    return rows.mul_(factor), ()


def kl_div_distill_grad(needs, extras, in_place: bool, pred: Tensor,
                        soft_label: Tensor, row_weight: Optional[Tensor], *,
                        T: float, reduce_sum: bool):
    """The gradient kernel of :func:`kl_div_distill_value`: ``d loss_i /
    d x_ij = T / C * (q_ij - t_ij)``.

    Each block writes into a fresh (N, C) tensor either ``e_s - e_t * S_s
    / S_t`` (the unshifted exponentials of :func:`_exponentials`, as in
    forward; the row's ``scale`` is ``1 / S_s``) or ``q - t`` by two
    softmaxes (``scale`` 1); ``T / C`` (times the row weight) completes the
    per-row ``scale`` the engine folds into its one pass. The teacher gets
    no gradient.
    """
    if not needs[0]:
        return (None, None, None), None
    dtype = compute_dtype(pred)
    grad = pred.new_empty(pred.shape, dtype=dtype)
    scale = pred.new_full((pred.size(0), ), T / pred.size(1), dtype=dtype)
    unshifted = dispatch.cpu_kernels(pred)
    for start, stop, student, teacher, scratch in _blocks_of(
            pred, soft_label, dtype):
        sums = _exponentials(student, teacher, T, scratch) \
            if unshifted else None
        if sums is None:
            torch.sub(_scaled_log_softmax(student, T, torch.softmax),
                      _scaled_log_softmax(teacher, T, torch.softmax),
                      out=grad[start:stop])
            continue
        student_sum, teacher_sum = sums
        torch.addcmul(scratch[0], scratch[1], torch.div(
            student_sum, teacher_sum).unsqueeze(1), value=-1,
                      out=grad[start:stop])
        scale[start:stop].div_(student_sum)
    if row_weight is not None:
        scale.mul_(row_weight)
    return (grad, None, None), scale


def _kl_div_distill_plain(pred: Tensor, soft_label: Tensor,
                          row_weight: Optional[Tensor], *, T: float,
                          reduce_sum: bool) -> Tensor:
    """The value of :func:`kl_div_distill_value` by autograd ops."""
    with dispatch.autocast_off(pred):
        rows = kl_div_distill_rows(pred, soft_label, T)
        if row_weight is not None:
            rows = rows * row_weight
        return rows.sum() if reduce_sum else rows


def knowledge_distillation_kl_div_loss(
        pred: Tensor, soft_label: Tensor, weight: OptTensor = None,
        reduction: str = 'mean', avg_factor: AvgFactor = None, *,
        T: float,
        detach_target: bool = True,
        fast: bool = True) -> Tensor:
    """Distillation loss (see the module docstring), weighted and reduced.

    Args:
        pred (Tensor): student logits (N, C) (or (N, C, d1, ...): the
            softmax and the mean run over dim 1).
        soft_label (Tensor): teacher logits, shaped like ``pred``.
        weight (Tensor, optional): per-row weight (N,) (broadcast to the
            row losses).
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean.
        T (float): temperature.
        detach_target (bool): no gradient into ``soft_label``.
        fast (bool): allow the fast path (2-D inputs with a detached
            target, as the dispatcher decides); ``False`` runs the plain
            formula.

    Returns:
        Tensor: the loss: for ``'none'`` in ``pred``'s dtype, reduced in
            float32 at least (:func:`mmloss.precision.restore_loss`).
    """
    return _kd_loss('knowledge_distillation_kl_div_loss', pred, soft_label,
                    weight, reduction, avg_factor, T, detach_target, fast)


def _kd_loss(loss_name, pred, soft_label, weight, reduction, avg_factor, T,
             detach_target, fast) -> Tensor:
    Reduction(loss_name, None, reduction, avg_factor).checked()
    check_tensor(loss_name, 'pred', pred)
    check_tensor(loss_name, 'soft_label', soft_label)
    check_same_shape(loss_name, pred, soft_label, ('pred', 'soft_label'))
    if pred.dim() < 2:
        raise LossValueError(f'{loss_name}: pred must have shape (N, C, ...), '
                             f'but has shape {tuple(pred.shape)}')
    if not pred.is_floating_point() or not soft_label.is_floating_point():
        raise LossTypeError(
            f'{loss_name}: pred and soft_label must be floating '
            f'point, but got {pred.dtype} and '
            f'{soft_label.dtype}')
    loss_shape = pred.shape[:1] + pred.shape[2:]
    check_weight_shape(loss_name, weight, loss_shape)
    with dispatch.autocast_off(pred):
        dtype = compute_dtype(pred)
        if weight is not None:
            weight = to_dtype(weight, dtype)
        rule = Reduction(loss_name, weight, reduction, avg_factor)
        if not (fast and pred.dim() == 2 and (
                detach_target or not soft_label.requires_grad) and
                dispatch.use_fast('KnowledgeDistillationKLDivLoss', pred,
                                  rows=pred.size(0))):
            rows = kl_div_distill_rows(pred, soft_label, T, detach_target)
            return restore_loss(rule.apply(rows), pred, rule.reduces)

        def run(reduce_sum: bool, weight: Optional[Tensor]) -> Tensor:
            options = dict(T=float(T), reduce_sum=reduce_sum)
            return gradient_in_backward(
                functools.partial(kl_div_distill_value, **options),
                functools.partial(kl_div_distill_grad, **options),
                functools.partial(_kl_div_distill_plain, **options), pred,
                soft_label.detach(),
                None if weight is None else weight.expand(loss_shape))

        return restore_loss(
            rule.run_kernel(run, dtype, pred.device, pred.size(0)), pred,
            rule.reduces)


@MODELS.register_module()
class KnowledgeDistillationKLDivLoss(BaseLoss):
    """KL-divergence distillation loss (MMDetection 3.3's twin).

    Paper: Hinton et al., "Distilling the Knowledge in a Neural Network", 2015, https://arxiv.org/abs/1503.02531

    The teacher logits (``soft_label``) are detached.

    Args:
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): factor applied to the loss.
        T (float): temperature, ``>= 1``. Defaults to 10.
    """

    def __init__(self, reduction: str = 'mean', loss_weight: float = 1.0,
                 T: int = 10) -> None:
        super().__init__(reduction, loss_weight)
        if isinstance(T, bool) or not isinstance(T, Real) or not T >= 1:
            raise LossValueError(f'{self.loss_name}: T must be a number >= 1, '
                                 f'but got {T!r}')
        self.T = T

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, T={self.T}'

    def forward(self, pred: Tensor, soft_label: Tensor,
                weight: OptTensor = None, avg_factor: AvgFactor = None,
                reduction_override: OptStr = None) -> Tensor:
        """Compute the loss.

        Args:
            pred (Tensor): student logits (N, C).
            soft_label (Tensor): teacher logits (N, C).
            weight (Tensor, optional): per-row weight (N,).
            avg_factor (float | Tensor, optional): denominator of the mean.
            reduction_override (str, optional): reduction for this call.

        Returns:
            Tensor: the weighted loss.
        """
        reduction = self.resolve_reduction(reduction_override)
        return self.apply_loss_weight(_kd_loss(
            self.loss_name, pred, soft_label, weight, reduction, avg_factor,
            self.T, True, True))
