"""Knowledge-distillation loss: KL divergence of temperature-softened logits.

Hinton et al., "Distilling the Knowledge in a Neural Network", 2015,
https://arxiv.org/abs/1503.02531 (used by LD: arXiv 2102.12252).

With ``t = softmax(s / T)`` (the teacher, detached by default) and ``log q =
log_softmax(x / T)`` (the student), per row over its ``C`` entries::

    loss_i = T^2 / C * sum_j t_ij * (log t_ij - log q_ij)

(mean over the classes times ``T^2``, as MMDetection 3.3). Shapes: student
and teacher logits (N, C) or (N, C, d1, ...) (the softmax and the mean run
over dim 1), one loss per row (N,) or (N, d1, ...).

The gradient is ``d loss_i / d x_ij = T / C * (q_ij - t_ij)``:
:func:`kl_div_distill_kernel` computes ``q - t`` in the forward pass and
fuses the weighting and the ``'mean'``/``'sum'`` reduction in; it runs
through :class:`mmloss.engine.functions.GradientInForward`, which saves that
gradient and, for a backward with ``create_graph=True``, differentiates the
plain formula (:func:`kl_div_distill_rows`) instead.
"""
import functools
from numbers import Real
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_same_shape, check_tensor, check_weight_shape
from ..engine import dispatch
from ..engine.functions import gradient_in_forward
from ..precision import compute_dtype, restore_dtype, to_dtype
from ..reduction import Reduction
from ..registry import MODELS
from .base import BaseLoss
from .focal import loss_like

__all__ = [
    'knowledge_distillation_kl_div_loss', 'KnowledgeDistillationKLDivLoss'
]


def _log_softmax_at(logits: Tensor, T: float, dtype: torch.dtype) -> Tensor:
    """A fresh ``log_softmax(logits / T)`` over dim 1, in ``dtype``.

    Where the CPU kernels may run, the softmax is written over the scaled
    copy (its kernel reads each row's maximum and sum before writing the
    row), so each call costs one fresh buffer, not two.
    """
    scaled = to_dtype(logits, dtype)
    if T != 1:
        scaled = scaled / T
    if scaled is logits or not scaled.is_contiguous() or \
            not dispatch.cpu_kernels(scaled):
        return F.log_softmax(scaled, dim=1)
    return torch.log_softmax(scaled, 1, out=scaled)


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


def kl_div_distill_kernel(needs, pred: Tensor, soft_label: Tensor,
                          row_weight: Optional[Tensor], *, T: float,
                          reduce_sum: bool):
    """Row-wise ``T^2 / C * KL(softmax(s/T) || softmax(x/T))`` of 2-D
    logits with its gradient, the engine kernel
    (:class:`~mmloss.engine.functions.GradientInForward`).

    The teacher ``s`` gets no gradient. The gradient of the unweighted row
    loss up to the factor ``T / C``, ``q - t``, is written over the student
    probabilities' buffer; ``T / C`` (times the (N,) row weight, if any)
    is the per-row ``scale`` that backward folds into its one pass.

    Returns:
        ``(value, grads, scale)``: (N,) weighted row losses or their sum,
        float32 at least.
    """
    dtype = compute_dtype(pred)
    num_classes = pred.size(1)
    log_target = _log_softmax_at(soft_label, T, dtype)
    target = log_target.exp()
    # a -inf teacher logit has t = 0 and adds 0 (x log x -> 0), as in
    # F.kl_div; clamping keeps 0 * -inf from turning into NaN
    log_target.clamp_(min=torch.finfo(dtype).min)
    log_student = _log_softmax_at(pred, T, dtype)
    # sum_j t (log t - log q), in place over log t
    rows = log_target.sub_(log_student).mul_(target).sum(1).mul_(
        T * T / num_classes)
    del log_target
    scale = T / num_classes
    if row_weight is not None:
        rows = rows * row_weight
        scale = row_weight * scale
    grad = None
    if needs[0]:
        # q - t, written over the student's log-probabilities
        grad = log_student.exp_().sub_(target)
    return (rows.sum() if reduce_sum else rows), (grad, None, None), scale


def _kl_div_distill_plain(pred: Tensor, soft_label: Tensor,
                          row_weight: Optional[Tensor], *, T: float,
                          reduce_sum: bool) -> Tensor:
    """The value of :func:`kl_div_distill_kernel` by autograd ops."""
    with dispatch.autocast_off(pred):
        rows = kl_div_distill_rows(pred, soft_label, T)
        if row_weight is not None:
            rows = rows * row_weight
        return rows.sum() if reduce_sum else rows


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
        Tensor: the reduced loss, dtype of ``pred``.
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
        raise ValueError(f'{loss_name}: pred must have shape (N, C, ...), '
                         f'but has shape {tuple(pred.shape)}')
    if not pred.is_floating_point() or not soft_label.is_floating_point():
        raise TypeError(f'{loss_name}: pred and soft_label must be floating '
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
            return restore_dtype(rule.apply(rows), pred)
        fused = rule.fusable(loss_like(loss_shape, dtype, pred.device),
                             None if weight is None else weight.shape)
        options = dict(T=float(T), reduce_sum=fused)
        row_weight = weight.expand(loss_shape) \
            if fused and weight is not None else None
        value = gradient_in_forward(
            functools.partial(kl_div_distill_kernel, **options),
            functools.partial(_kl_div_distill_plain, **options), pred,
            soft_label.detach(), row_weight)
        if fused:
            return restore_dtype(rule.finish(value, pred.size(0)), pred)
        return restore_dtype(rule.apply(value), pred)


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
        return self.apply_loss_weight(_kd_loss(
            self.loss_name, pred, soft_label, weight, reduction, avg_factor,
            self.T, True, True))
