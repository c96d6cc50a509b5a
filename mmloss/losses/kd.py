"""Knowledge-distillation loss: KL divergence of temperature-softened logits.

Hinton et al., "Distilling the Knowledge in a Neural Network", 2015,
https://arxiv.org/abs/1503.02531 (used by LD: arXiv 2102.12252).

With ``t = softmax(s / T)`` (the teacher, no gradient) and ``log q =
log_softmax(x / T)`` (the student), per row over its ``C`` entries::

    loss_i = T^2 / C * sum_j t_ij * (log t_ij - log q_ij)

(mean over the classes times ``T^2``, as MMDetection 3.3). The gradient is
``d loss_i / d x_ij = T / C * (q_ij - t_ij)``; :class:`KLDivDistillFunction`
computes ``q - t`` in the forward pass, saves only it and fuses the
weighting and the ``'mean'``/``'sum'`` reduction in.
"""
from numbers import Real
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..checks import (check_avg_factor, check_same_shape, check_tensor,
                      check_weight_shape)
from ..gradients import scale_saved_grad
from ..precision import compute_dtype, to_dtype
from ..reduction import reduce_weighted_sum, weight_reduce_loss
from ..registry import MODELS
from .base import BaseLoss

__all__ = [
    'knowledge_distillation_kl_div_loss', 'KLDivDistillFunction',
    'KnowledgeDistillationKLDivLoss'
]


def _log_softmax_at(logits: Tensor, T: float, dtype: torch.dtype) -> Tensor:
    """A fresh ``log_softmax(logits / T)`` over dim 1, in ``dtype``.

    On the CPU the softmax is written over the scaled copy (its kernel reads
    each row's maximum and sum before writing the row), so each call costs
    one fresh buffer, not two.
    """
    scaled = to_dtype(logits, dtype)
    if T != 1:
        scaled = scaled / T
    if scaled is logits or scaled.device.type != 'cpu' or \
            not scaled.is_contiguous():
        return F.log_softmax(scaled, dim=1)
    return torch.log_softmax(scaled, 1, out=scaled)


class KLDivDistillFunction(torch.autograd.Function):
    """Row-wise ``T^2 / C * KL(softmax(s/T) || softmax(x/T))``, 2-D inputs.

    The teacher ``s`` gets no gradient. Forward computes the gradient of
    the unweighted row loss up to the factor ``T / C``, ``q - t``, in the
    student probabilities' buffer and saves only it (MMDetection keeps the
    student log-softmax *and* ``t``); backward scales it per row by the
    incoming gradient, the row weight and ``T / C`` in one pass, in place
    when the graph is freed.

    Args (of ``apply``):
        pred (Tensor): (N, C) student logits.
        soft_label (Tensor): (N, C) teacher logits.
        T (float): temperature.
        row_weight (Tensor, optional): (N,) factor per row (no gradient).
        reduce_sum (bool): return the sum of the (weighted) row losses.

    Returns:
        Tensor: (N,) weighted row losses or their sum, float32 for half
        inputs.
    """

    @staticmethod
    def forward(ctx, pred: Tensor, soft_label: Tensor, T: float,
                row_weight: Optional[Tensor] = None,
                reduce_sum: bool = False) -> Tensor:
        dtype = compute_dtype(pred)
        log_target = _log_softmax_at(soft_label, T, dtype)
        target = log_target.exp()
        # a -inf teacher logit has t = 0 and adds 0 (x log x -> 0), as in
        # F.kl_div; clamping keeps 0 * -inf from turning into NaN
        log_target.clamp_(min=torch.finfo(dtype).min)
        log_student = _log_softmax_at(pred, T, dtype)
        # sum_j t (log t - log q), in place over log t
        rows = log_target.sub_(log_student).mul_(target).sum(1).mul_(
            T * T / pred.size(1))
        del log_target
        if row_weight is not None:
            row_weight = to_dtype(row_weight, dtype)
            rows = rows * row_weight
        # q - t, written over the student's log-probabilities
        ctx.save_for_backward(log_student.exp_().sub_(target),
                              row_weight)
        ctx.scale, ctx.pred_dtype = T / pred.size(1), pred.dtype
        return rows.sum() if reduce_sum else rows

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        grad, row_weight = ctx.saved_tensors
        grad = scale_saved_grad(grad, grad_out, ctx.scale,
                                row_factor=row_weight)
        return to_dtype(grad, ctx.pred_dtype), None, None, None, None


def _kd_rows_plain(pred: Tensor, soft_label: Tensor, T: float,
                   detach_target: bool) -> Tensor:
    """The formula with ``F.kl_div`` (reference, and any-dim inputs)."""
    dtype = compute_dtype(pred)
    target = F.softmax(soft_label.to(dtype) / T, dim=1)
    if detach_target:
        target = target.detach()
    return F.kl_div(F.log_softmax(pred.to(dtype) / T, dim=1), target,
                    reduction='none').mean(1) * (T * T)


def knowledge_distillation_kl_div_loss(
        pred: Tensor,
        soft_label: Tensor,
        weight: Optional[Tensor] = None,
        reduction: str = 'mean',
        avg_factor: Optional[Union[float, Tensor]] = None,
        *,
        T: float,
        detach_target: bool = True,
        fast: bool = True) -> Tensor:
    """Distillation loss (see the module docstring), weighted and reduced.

    Args:
        pred (Tensor): student logits (N, C) (or (N, C, d1, ...): the
            softmax and the mean run over dim 1).
        soft_label (Tensor): teacher logits, shaped like ``pred``.
        weight (Tensor, optional): per-row weight (N,).
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean.
        T (float): temperature.
        detach_target (bool): no gradient into ``soft_label``.
        fast (bool): analytic backward (2-D inputs with a detached target).

    Returns:
        Tensor: the reduced loss, dtype of ``pred``.
    """
    if fast and detach_target and pred.dim() == 2 and not (
            weight is not None and weight.requires_grad):
        row_weight = None if weight is None else \
            weight.reshape(-1).expand(pred.size(0))
        if reduction == 'none':
            return KLDivDistillFunction.apply(
                pred, soft_label.detach(), T, row_weight,
                False).to(pred.dtype)
        total = KLDivDistillFunction.apply(pred, soft_label.detach(), T,
                                           row_weight, True)
        return reduce_weighted_sum('KnowledgeDistillationKLDivLoss', total,
                                   pred.size(0), reduction,
                                   avg_factor).to(pred.dtype)
    rows = _kd_rows_plain(pred, soft_label, T, detach_target)
    if weight is not None:
        weight = weight.to(rows.dtype)
    return weight_reduce_loss(rows, weight, reduction,
                              avg_factor).to(pred.dtype)


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

    def __init__(self,
                 reduction: str = 'mean',
                 loss_weight: float = 1.0,
                 T: int = 10) -> None:
        super().__init__(reduction, loss_weight)
        if isinstance(T, bool) or not isinstance(T, Real) or not T >= 1:
            raise ValueError(f'{self.loss_name}: T must be a number >= 1, '
                             f'but got {T!r}')
        self.T = T

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, T={self.T}'

    def forward(self,
                pred: Tensor,
                soft_label: Tensor,
                weight: Optional[Tensor] = None,
                avg_factor: Optional[Union[float, Tensor]] = None,
                reduction_override: Optional[str] = None) -> Tensor:
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
        check_avg_factor(self.loss_name, reduction, avg_factor)
        name = self.loss_name
        check_tensor(name, 'pred', pred)
        check_tensor(name, 'soft_label', soft_label)
        check_same_shape(name, pred, soft_label, ('pred', 'soft_label'))
        if pred.dim() < 2:
            raise ValueError(f'{name}: pred must have shape (N, C, ...), '
                             f'but has shape {tuple(pred.shape)}')
        if not pred.is_floating_point() or not soft_label.is_floating_point():
            raise TypeError(f'{name}: pred and soft_label must be floating '
                            f'point, but got {pred.dtype} and '
                            f'{soft_label.dtype}')
        check_weight_shape(name, weight,
                           pred.shape[:1] + pred.shape[2:])
        return self.apply_loss_weight(knowledge_distillation_kl_div_loss(
            pred, soft_label, weight, reduction, avg_factor, T=self.T))
