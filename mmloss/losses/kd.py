"""Knowledge-distillation loss: KL divergence of temperature-softened logits.

Hinton et al., "Distilling the Knowledge in a Neural Network", 2015,
https://arxiv.org/abs/1503.02531 (used by LD: arXiv 2102.12252).

With ``t = softmax(s / T)`` (the teacher, no gradient) and ``log q =
log_softmax(x / T)`` (the student), per row over its ``C`` entries::

    loss_i = T^2 / C * sum_j t_ij * (log t_ij - log q_ij)

(mean over the classes times ``T^2``, as MMDetection 3.3). The gradient is
``d loss_i / d x_ij = T / C * (q_ij - t_ij)``; :class:`KLDivDistillFunction`
uses it and saves only the student and the teacher probabilities.
"""
from numbers import Real
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import (check_avg_factor, check_same_shape, check_tensor,
                      check_weight_shape)
from ..precision import compute_dtype
from ..reduction import weight_reduce_loss
from ..registry import MODELS
from .base import BaseLoss

__all__ = [
    'knowledge_distillation_kl_div_loss', 'KLDivDistillFunction',
    'KnowledgeDistillationKLDivLoss'
]


class KLDivDistillFunction(torch.autograd.Function):
    """Row-wise ``T^2 / C * KL(softmax(s/T) || softmax(x/T))``, 2-D inputs.

    The teacher ``s`` gets no gradient. Forward saves the student and teacher
    probabilities ``q`` and ``t`` (MMDetection keeps the student log-softmax
    and ``t``, the same size); backward is ``T / C * (q - t)``.

    Args (of ``apply``):
        pred (Tensor): (N, C) student logits.
        soft_label (Tensor): (N, C) teacher logits.
        T (float): temperature.

    Returns:
        Tensor: (N,), float32 for half inputs.
    """

    @staticmethod
    def forward(ctx, pred: Tensor, soft_label: Tensor, T: float) -> Tensor:
        dtype = compute_dtype(pred)
        log_target = F.log_softmax(soft_label.to(dtype) / T, dim=1)
        target = log_target.exp()
        # a -inf teacher logit has t = 0 and adds 0 (x log x -> 0), as in
        # F.kl_div; clamping keeps 0 * -inf from turning into NaN
        log_target.clamp_(min=torch.finfo(dtype).min)
        log_student = F.log_softmax(pred.to(dtype) / T, dim=1)
        log_target.sub_(log_student)
        rows = torch.linalg.vecdot(target, log_target) * (
            T * T / pred.size(1))
        ctx.T, ctx.pred_dtype = T, pred.dtype
        # q itself (the size of the log-softmax MMDetection keeps), so
        # backward needs no second softmax
        ctx.save_for_backward(log_student.exp_(), target)
        return rows

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        student, target = ctx.saved_tensors
        T = ctx.T
        scale = grad_out.to(target.dtype)[:, None] * (T / target.size(1))
        grad = (student - target).mul_(scale)
        return grad.to(ctx.pred_dtype), None, None


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
    if fast and detach_target and pred.dim() == 2:
        rows = KLDivDistillFunction.apply(pred, soft_label.detach(), T)
    else:
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
