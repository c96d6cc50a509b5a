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
:class:`mmloss.engine.functions.GradientFromOutput`: forward takes one
exponential per logit of each input (:func:`kl_div_distill_kernel`, the
``'mean'``/``'sum'`` reduction fused in) and keeps the two softmaxes
(as much as MMDetection's two ``N x C`` tensors; not the logits), from
which backward computes ``q - t`` in place. On the CPU the softmaxes come
from unshifted exponentials and their row sums where those are in range
(checked on the host), else, like on every accelerator, from log-softmax
ops. A backward with ``create_graph=True`` takes the same gradient by
differentiable ops of the kept student softmax, so higher derivatives are
exact too.
"""
import functools
from numbers import Real
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_same_shape, check_tensor, check_weight_shape
from ..engine import dispatch
from ..engine.functions import FromOutput, gradient_from_output
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


def _fill_unshifted(student: Tensor, teacher: Tensor, T: float,
                    q: Tensor, t: Tensor, scratch: Tensor
                    ) -> Optional[Tensor]:
    """One block's ``KL * T`` from unshifted exponentials, which become
    ``q`` and ``t``; ``None`` (``q``, ``t`` unspecified) where a row sum
    leaves :func:`~mmloss.losses.cross_entropy_kernels.sums_in_range`.

    With ``d_j = (s_j - x_j) / T`` and ``k = logsumexp(s / T) -
    logsumexp(x / T) = log(S_t / S_s)``, ``KL = sum_j t_j (d_j - k)``:
    ``log t_j - log q_j`` as one difference, so that logits a constant
    apart lose no digits. A zero teacher probability (a ``-inf`` logit)
    adds 0 (the difference is clamped to a finite number).
    """
    torch.mul(student, 1 / T, out=q).exp_()
    torch.mul(teacher, 1 / T, out=t).exp_()
    student_sum, teacher_sum = q.sum(1), t.sum(1)
    if not sums_in_range(student_sum, teacher_sum):
        return None
    offset = torch.div(teacher_sum, student_sum).log_().mul_(T)
    centred = torch.sub(teacher, student, out=scratch).sub_(
        offset.unsqueeze(1)).clamp_(min=torch.finfo(student.dtype).min)
    rows = centred.mul_(t).sum(1).div_(teacher_sum)
    q.div_(student_sum.unsqueeze(1))
    t.div_(teacher_sum.unsqueeze(1))
    return rows


def _fill_log_softmax(student: Tensor, teacher: Tensor, T: float,
                      q: Tensor, t: Tensor) -> Tensor:
    """One block's ``KL * T`` by two log-softmaxes (any logits; a zero
    teacher probability, from a ``-inf`` logit, adds 0 as in
    ``F.kl_div``), their exponentials into ``q`` and ``t``."""
    log_q = torch.log_softmax(student * (1 / T), 1)
    log_t = torch.log_softmax(teacher * (1 / T), 1)
    torch.exp(log_q, out=q)
    torch.exp(log_t, out=t)
    log_t.clamp_(min=torch.finfo(log_t.dtype).min)
    return log_t.sub_(log_q).mul_(t).sum(1).mul_(T)


def kl_div_distill_kernel(pred: Tensor, soft_label: Tensor,
                          row_weight: Optional[Tensor], *, T: float,
                          reduce_sum: bool):
    """Row-wise ``T^2 / C * KL(softmax(s/T) || softmax(x/T))`` of 2-D
    logits (or, weighted by the (N,) ``row_weight``, their sum) and the
    two softmaxes its gradient comes from: the kernel of
    :class:`~mmloss.engine.functions.GradientFromOutput`.

    Block by block, each by :func:`_fill_unshifted` where the CPU kernels
    may run (:func:`mmloss.engine.dispatch.cpu_kernels`: its row sums are
    checked on the host) and its row sums are in range, else by
    :func:`_fill_log_softmax` (one fused op per softmax, no host read).
    One exponential per logit either way; float32 at least.

    Returns:
        ``(value, q, (t, row_weight))``: the weighted row losses or their
        sum, the student's softmax ``q`` (the hidden output) and the
        teacher's ``t``, (N, C) each.
    """
    dtype = compute_dtype(pred)
    student, teacher = to_dtype(pred, dtype), to_dtype(soft_label, dtype)
    q, t = torch.empty_like(student), torch.empty_like(student)
    spans = row_blocks(student)
    scratch = student.new_empty((spans[0][1] - spans[0][0],
                                 student.size(1)))
    unshifted = dispatch.cpu_kernels(pred)
    rows = student.new_empty(student.size(0))
    for start, stop in spans:
        block = (student[start:stop], teacher[start:stop], T,
                 q[start:stop], t[start:stop])
        part = _fill_unshifted(*block, scratch[:stop - start]) \
            if unshifted else None
        rows[start:stop] = _fill_log_softmax(*block) if part is None \
            else part
    factor = T / pred.size(1)
    if row_weight is not None:
        rows = rows * row_weight
    value = rows.sum() * factor if reduce_sum else rows.mul_(factor)
    return value, q, (t, row_weight)


def _row_factor(q: Tensor, row_weight: Optional[Tensor], T: float):
    """``T / C`` times the row weight, (N,) or a number."""
    factor = T / q.size(1)
    return factor if row_weight is None else row_weight * factor


def _kd_grad_kernel(q: Tensor, extras, in_place: bool, *, T: float):
    """``d loss_i / d x_ij = T / C * w_i (q_ij - t_ij)``: ``q - t`` (over
    ``q`` where ``in_place``) and the per-row ``scale`` ``T / C * w_i``
    the engine folds into its one pass. The teacher gets no gradient."""
    t, row_weight = extras
    grad = q.sub_(t) if in_place else q - t
    return grad, _row_factor(q, row_weight, T)


def _kd_grad_formula(q: Tensor, extras, *, T: float) -> Tensor:
    """The gradient of :func:`_kd_grad_kernel` by differentiable ops of
    ``q`` (a double backward)."""
    t, row_weight = extras
    factor = _row_factor(q, row_weight, T)
    if isinstance(factor, Tensor):
        factor = factor.unsqueeze(1)
    return (q - t) * factor


def _softmax_backward(q: Tensor, extras, grad: Tensor, *,
                      T: float) -> Tensor:
    """``d q / d x`` applied to ``grad`` for ``q = softmax(x / T)``."""
    return (grad - (grad * q).sum(1, keepdim=True)) * q * (1 / T)


def kd_rule(T: float, reduce_sum: bool) -> FromOutput:
    """The :class:`~mmloss.engine.functions.FromOutput` of the KD kernel
    with these options."""
    return FromOutput(
        functools.partial(kl_div_distill_kernel, T=T, reduce_sum=reduce_sum),
        functools.partial(_kd_grad_kernel, T=T),
        functools.partial(_kd_grad_formula, T=T),
        functools.partial(_softmax_backward, T=T))


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
    Reduction.check(loss_name, reduction, avg_factor)
    if not (isinstance(pred, Tensor) and isinstance(soft_label, Tensor)
            and pred.shape == soft_label.shape):
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
    check_weight_shape(loss_name, weight, pred.shape[:1] + pred.shape[2:])
    return dispatch.without_autocast(
        pred, _kd_loss_body, loss_name, pred, soft_label, weight, reduction,
        avg_factor, T, detach_target, fast)


def _kd_loss_body(loss_name, pred, soft_label, weight, reduction, avg_factor,
                  T, detach_target, fast) -> Tensor:
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
    loss_shape = pred.shape[:1] + pred.shape[2:]

    def run(reduce_sum: bool, weight: Optional[Tensor]) -> Tensor:
        return gradient_from_output(
            kd_rule(float(T), reduce_sum), pred, soft_label.detach(),
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
        loss = _kd_loss(self.loss_name, pred, soft_label, weight, reduction,
                        avg_factor, self.T, True, True)
        return self.apply_loss_weight(loss)
