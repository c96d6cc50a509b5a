"""Varifocal loss (Zhang et al., "VarifocalNet", CVPR 2021): the public
function, the plain formula and the kernels of its fast path.

Where the CPU kernels may run (:func:`mmloss.engine.dispatch.cpu_kernels`),
the focal kernel computes every entry (a zero target is a focal negative)
and only the non-zero targets are recomputed.
"""
import functools
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ...checks import check_tensor, check_weight_shape
from ...engine import dispatch
from ...engine.functions import gradient_in_forward
from ...errors import LossValueError
from ...precision import compute_dtype, restore_loss, to_dtype
from ...reduction import Reduction, weighted_total
from ..focal_kernels import sigmoid_focal_kernel
from .common import _check_float_pred, _weighted_rule

__all__ = ['varifocal_loss']


def _rows(pred: Tensor) -> int:
    return pred.shape[0] if pred.dim() else 1


def varifocal_loss(pred: Tensor,
                   target: Tensor,
                   weight: Optional[Tensor] = None,
                   alpha: float = 0.75,
                   gamma: float = 2.0,
                   iou_weighted: bool = True,
                   reduction: str = 'mean',
                   avg_factor: Optional[Union[float, Tensor]] = None
                   ) -> Tensor:
    """Varifocal loss (Zhang et al. 2021), weighted and reduced.

    ``q * BCE(x, q)`` where ``q > 0`` (``BCE`` alone unless
    ``iou_weighted``) and ``alpha * |p - q| ** gamma * BCE(x, q)`` where
    ``q <= 0``.

    Args:
        pred (Tensor): logits (N, C).
        target (Tensor): IoU-aware targets of ``pred``'s shape.
        weight (Tensor, optional): broadcast to the element-wise loss.
        alpha (float): weight of the negatives, ``>= 0``.
        gamma (float): focusing exponent of the negatives.
        iou_weighted (bool): weight the positives by their target.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean.

    Returns:
        Tensor: (N, C) for ``'none'`` in ``pred``'s dtype, else a scalar
            in float32 at least (:func:`mmloss.precision.restore_loss`).
    """
    return _varifocal_loss('varifocal_loss', pred, target, weight, alpha,
                           gamma, iou_weighted, reduction, avg_factor)


def _varifocal_loss(loss_name, pred, target, weight, alpha, gamma,
                    iou_weighted, reduction, avg_factor):
    Reduction(loss_name, None, reduction, avg_factor).checked()
    _check_float_pred(loss_name, pred)
    check_tensor(loss_name, 'target', target)
    if pred.shape != target.shape:
        raise LossValueError(
            f'{loss_name}: pred has shape {tuple(pred.shape)} '
            f'but target has shape {tuple(target.shape)}')
    check_weight_shape(loss_name, weight, pred.shape)
    with dispatch.autocast_off(pred):
        dtype, weight, rule = _weighted_rule(loss_name, pred, weight,
                                             reduction, avg_factor)
        if target.requires_grad or not dispatch.use_fast(
                'VarifocalLoss', pred, rows=_rows(pred)):
            loss = varifocal_elementwise(pred, target, alpha, gamma,
                                         iou_weighted)
            return restore_loss(rule.apply(loss), pred, rule.reduces)

        def run(reduce_sum: bool, weight: Optional[Tensor]) -> Tensor:
            options = dict(alpha=float(alpha), gamma=float(gamma),
                           iou_weighted=bool(iou_weighted),
                           reduce_sum=reduce_sum)
            return gradient_in_forward(
                functools.partial(_varifocal_engine_kernel, **options),
                functools.partial(_varifocal_engine_plain, **options), pred,
                target, weight)

        return restore_loss(
            rule.run_kernel(run, dtype, pred.device, pred.numel()), pred,
            rule.reduces)


def varifocal_elementwise(pred: Tensor, target: Tensor, alpha: float,
                          gamma: float, iou_weighted: bool) -> Tensor:
    """The plain element-wise varifocal loss (autograd, any order), in
    float32 at least."""
    dtype = compute_dtype(pred)
    x, target = to_dtype(pred, dtype), to_dtype(target, dtype)
    prob = torch.sigmoid(x)
    bce = F.binary_cross_entropy_with_logits(x, target, reduction='none')
    negative_weight = alpha * (prob - target).abs().pow(gamma)
    positive_weight = target if iou_weighted else torch.ones_like(target)
    return bce * torch.where(target > 0, positive_weight, negative_weight)


def varifocal_kernel(logits: Tensor, target: Tensor,
                     weight: Optional[Tensor], alpha: float, gamma: float,
                     iou_weighted: bool, reduce_sum: bool, need_grad: bool
                     ) -> Tuple[Tensor, Optional[Tensor]]:
    """Varifocal loss (element-wise or summed) and its gradient in one pass.

    With ``d = p - q`` and ``BCE = softplus(x) - x q``::

        q > 0:   loss = w_q * BCE,              dl/dx = w_q * d
        q <= 0:  loss = alpha |d|**g * BCE,     dl/dx = alpha |d|**g *
                                                  (g * p (1-p) / d * BCE + d)

    where ``w_q = q`` (``iou_weighted``) or 1; for ``q = 0``,
    ``p (1-p) / d = 1 - p`` (no division, no singularity at ``p = 0``).
    """
    prob = torch.sigmoid(logits)
    bce = F.softplus(logits).addcmul_(logits, target, value=-1)
    diff = prob - target
    positive = target > 0
    negative_factor = diff.abs().pow_(gamma).mul_(alpha)
    positive_factor = target if iou_weighted else 1.0
    loss = bce * torch.where(positive, positive_factor, negative_factor)
    loss = weighted_total(loss, weight, reduce_sum)
    grad = None
    if need_grad:
        one_minus = 1 - prob
        ratio = torch.where(target == 0, one_minus,
                            prob.mul_(one_minus).div_(diff))
        del one_minus, prob
        negative_grad = ratio.mul_(bce).mul_(gamma).add_(diff).mul_(
            negative_factor)
        grad = torch.where(positive, diff.mul_(positive_factor),
                           negative_grad)
        if weight is not None:
            grad = grad * weight
    return loss, grad


def _varifocal_mostly_zero(logits: Tensor, target: Tensor,
                           weight: Optional[Tensor], alpha: float,
                           gamma: float, iou_weighted: bool,
                           reduce_sum: bool, need_grad: bool
                           ) -> Tuple[Tensor, Optional[Tensor], float]:
    """:func:`varifocal_kernel` for targets that are mostly 0 (the rule).

    Where ``q = 0`` the varifocal loss ``alpha p**g softplus(x)`` is the
    focal loss of a negative with focal ``alpha' = 1 - alpha``, so
    :func:`mmloss.losses.focal_kernels.sigmoid_focal_kernel` (labels: all
    background) computes every entry in its few fused passes; the entries
    with ``q != 0`` (a handful per positive row) are then found and
    recomputed with the general formula. Finding them has a data-dependent
    size, so this runs only where the CPU kernels may
    (:func:`mmloss.engine.dispatch.cpu_kernels`).

    Returns ``(loss, grad, grad_scale)`` like the focal kernel: the
    gradient is ``grad * grad_scale``.
    """
    # contiguous, so that the kernel's results are too (flat updates below)
    logits = logits.contiguous()
    loss, grad, grad_scale = sigmoid_focal_kernel(
        logits, None, weight, gamma, 1.0 - alpha, 0.0, reduce_sum, need_grad)
    index = target.reshape(-1).nonzero().squeeze(1)
    if index.numel() == 0:
        return loss, grad, grad_scale
    x = logits.reshape(-1).index_select(0, index)
    q = target.reshape(-1).index_select(0, index)
    # the weight at those entries, without spreading a broadcast one out
    w = None if weight is None else weight.expand_as(logits)[
        index // logits.shape[1], index % logits.shape[1]]
    loss_k, grad_k = varifocal_kernel(x, q, w, alpha, gamma, iou_weighted,
                                      False, need_grad)
    if reduce_sum:
        # the negative formula's value that the sum holds for these entries
        negative = torch.sigmoid(x).pow_(gamma).mul_(F.softplus(x)).mul_(
            alpha)
        if w is not None:
            negative.mul_(w)
        loss = loss + (loss_k.sum() - negative.sum())
    else:
        loss.view(-1).index_copy_(0, index, loss_k)
    if grad is not None:
        grad.view(-1).index_copy_(0, index, grad_k.div_(grad_scale))
    return loss, grad, grad_scale


def _varifocal_engine_kernel(needs, logits: Tensor, target: Tensor,
                             weight: Optional[Tensor], *, alpha: float,
                             gamma: float, iou_weighted: bool,
                             reduce_sum: bool):
    """The engine kernel: 2-D logits take :func:`_varifocal_mostly_zero`
    where the CPU kernels may run, anything else :func:`varifocal_kernel`
    (every entry, no data-dependent shapes)."""
    dtype = compute_dtype(logits)
    args = (to_dtype(logits, dtype), to_dtype(target, dtype), weight, alpha,
            gamma, iou_weighted, reduce_sum, needs[0])
    if logits.dim() == 2 and dispatch.cpu_kernels(logits):
        loss, grad, scale = _varifocal_mostly_zero(*args)
    else:
        (loss, grad), scale = varifocal_kernel(*args), 1.0
    return loss, (grad, None, None), scale


def _varifocal_engine_plain(logits: Tensor, target: Tensor,
                            weight: Optional[Tensor], *, alpha: float,
                            gamma: float, iou_weighted: bool,
                            reduce_sum: bool) -> Tensor:
    """The value of :func:`_varifocal_engine_kernel` by autograd ops."""
    with dispatch.autocast_off(logits):
        loss = varifocal_elementwise(logits, target, alpha, gamma,
                                     iou_weighted)
        if weight is not None:
            loss = loss * weight
        return loss.sum() if reduce_sum else loss
