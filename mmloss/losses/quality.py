"""Quality-aware classification losses: Varifocal, Quality Focal, DFL.

* Varifocal loss (Zhang et al., "VarifocalNet: An IoU-aware Dense Object
  Detector", CVPR 2021, https://arxiv.org/abs/2008.13367), for logits ``x``,
  ``p = sigmoid(x)`` and an IoU-aware target ``q`` of the same shape::

      VFL = q * BCE(x, q)                         if q > 0   (iou_weighted)
            BCE(x, q)                             if q > 0   (otherwise)
            alpha * |p - q| ** gamma * BCE(x, q)  if q <= 0

* Quality focal loss and distribution focal loss (Li et al., "Generalized
  Focal Loss", NeurIPS 2020, https://arxiv.org/abs/2006.04388). QFL with a
  quality score ``y`` at each row's label and 0 elsewhere, summed over the
  classes of a row::

      QFL = |y - p| ** beta * BCE(x, y)

  DFL of a continuous target ``y`` between the integers ``l <= y < l + 1``
  over the softmax distribution ``S`` of a row::

      DFL = -((l + 1 - y) * log S_l + (y - l) * log S_(l+1))

Shapes: VFL logits and targets (N, C) (any shape); QFL logits (N, C) with
``(labels (N,), scores (N,))`` or a soft target (N, C); DFL logits
(N, n + 1) with distances (N,) in ``[0, n]``.

The label form of QFL never builds an ``N x C`` target: the background
formula ``p ** beta * softplus(x)`` is summed per row and each foreground
row's label entry is corrected. VFL, the logit label form of QFL and DFL
compute their gradient analytically in the forward pass
(:class:`mmloss.engine.functions.GradientInForward`: the gradient is saved;
a backward with ``create_graph=True`` differentiates the plain formula, so
second derivatives are exact). Where the CPU kernels may run
(:func:`mmloss.engine.dispatch.cpu_kernels`), VFL runs the focal kernel over
every entry (a zero target is a focal negative) and recomputes only the
non-zero targets. The probability (``activated``) and soft-target forms of
QFL, and targets that need a gradient, take the plain formula.
"""
import functools
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import (check_integer_labels, check_label_range,
                      check_positive, check_tensor, check_weight_shape)
from ..engine import dispatch
from ..engine.functions import gradient_in_forward
from ..precision import compute_dtype, restore_dtype, to_dtype
from ..reduction import Reduction
from ..registry import MODELS
from .base import BaseLoss
from .cross_entropy import accurate_neg_log
from .focal import _check_use_sigmoid, loss_like, sigmoid_focal_kernel

__all__ = [
    'varifocal_loss', 'quality_focal_loss', 'distribution_focal_loss',
    'VarifocalLoss', 'QualityFocalLoss', 'DistributionFocalLoss'
]

# ``binary_cross_entropy`` on probabilities clamps ``log`` at -100
_LOG_CLAMP = -100.0


def _check_float_pred(loss_name: str, pred: Tensor) -> None:
    check_tensor(loss_name, 'pred', pred)
    if not pred.dtype.is_floating_point:
        raise TypeError(f'{loss_name}: pred must be a floating point tensor, '
                        f'but has dtype {pred.dtype}')


def _rows(pred: Tensor) -> int:
    return pred.shape[0] if pred.dim() else 1


# ---------------------------------------------------------------------------
# Varifocal loss
# ---------------------------------------------------------------------------
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
        Tensor: (N, C) for ``'none'``, else a scalar; ``pred``'s dtype.
    """
    return _varifocal_loss('varifocal_loss', pred, target, weight, alpha,
                           gamma, iou_weighted, reduction, avg_factor)


def _varifocal_loss(loss_name, pred, target, weight, alpha, gamma,
                    iou_weighted, reduction, avg_factor):
    Reduction(loss_name, None, reduction, avg_factor).checked()
    _check_float_pred(loss_name, pred)
    check_tensor(loss_name, 'target', target)
    if pred.shape != target.shape:
        raise ValueError(f'{loss_name}: pred has shape {tuple(pred.shape)} '
                         f'but target has shape {tuple(target.shape)}')
    check_weight_shape(loss_name, weight, pred.shape)
    with dispatch.autocast_off(pred):
        dtype = compute_dtype(pred)
        if weight is not None:
            weight = to_dtype(weight, dtype)
        rule = Reduction(loss_name, weight, reduction, avg_factor)
        if target.requires_grad or not dispatch.use_fast(
                'VarifocalLoss', pred, rows=_rows(pred)):
            loss = varifocal_elementwise(pred, target, alpha, gamma,
                                         iou_weighted)
            return restore_dtype(rule.apply(loss), pred)
        fused = rule.fusable(loss_like(pred.shape, dtype, pred.device),
                             None if weight is None else weight.shape)
        options = dict(alpha=float(alpha), gamma=float(gamma),
                       iou_weighted=bool(iou_weighted), reduce_sum=fused)
        value = gradient_in_forward(
            functools.partial(_varifocal_engine_kernel, **options),
            functools.partial(_varifocal_engine_plain, **options), pred,
            target, weight if fused else None)
        if fused:
            return restore_dtype(rule.finish(value, pred.numel()), pred)
        return restore_dtype(rule.apply(value), pred)


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
    if weight is not None:
        loss = loss * weight
    if reduce_sum:
        loss = loss.sum()
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
    :func:`mmloss.losses.focal.sigmoid_focal_kernel` (labels: all
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


# ---------------------------------------------------------------------------
# Quality focal loss
# ---------------------------------------------------------------------------
def _negative_terms(x: Tensor, activated: bool) -> Tuple[Tensor, Tensor]:
    """``(p, -log(1 - p))`` for logits or (``activated``) probabilities."""
    if activated:
        return x, -torch.log1p(-x).clamp(min=_LOG_CLAMP)
    return torch.sigmoid(x), F.softplus(x)


def _bce(x: Tensor, target: Tensor, activated: bool) -> Tensor:
    if activated:
        return F.binary_cross_entropy(x, target, reduction='none')
    return F.binary_cross_entropy_with_logits(x, target, reduction='none')


def quality_focal_loss_labels(pred: Tensor, labels: Tensor, scores: Tensor,
                              beta: float = 2.0,
                              activated: bool = False) -> Tensor:
    """Per-row QFL for labels (N,) in ``[0, C]`` and quality scores (N,).

    Every entry is a negative (target 0: ``p ** beta * BCE(x, 0)``) except
    each foreground row's label entry (target ``score``:
    ``|score - p| ** beta * BCE(x, score)``). Returns the row sums (N,).
    The plain formula (autograd, any order).
    """
    num_rows, num_classes = pred.shape
    prob, neg_ce = _negative_terms(pred, activated)
    loss = (prob.pow(beta) * neg_ce).sum(dim=1)
    if num_classes == 0:
        return loss
    foreground = labels < num_classes
    flat = torch.arange(num_rows, device=pred.device) * num_classes + \
        labels.clamp(max=num_classes - 1)
    label_pred = pred.take(flat)
    label_prob = prob.take(flat)
    scores = scores.to(pred.dtype)
    positive = _bce(label_pred, scores, activated) * (
        scores - label_prob).abs().pow(beta)
    negative = label_prob.pow(beta) * neg_ce.take(flat)
    return loss + torch.where(foreground, positive - negative, 0)


def quality_focal_kernel(needs, logits: Tensor, labels: Tensor,
                         scores: Tensor, *, beta: float):
    """Per-row QFL of logits and ``(labels, scores)`` with its gradient.

    The engine kernel (:class:`~mmloss.engine.functions.GradientInForward`)
    of :func:`quality_focal_loss_labels`: the row sums (N,) in float32 at
    least. The background formula ``p**beta * softplus(x)`` and its
    gradient come from the focal kernel (alpha = 0, every row background);
    each foreground row's label entry is then replaced by
    ``|d|**beta * BCE(x, s)`` with ``d = p - s`` and gradient
    ``|d|**beta * (beta * p (1-p) BCE / d + d)`` (0 where ``d = 0``).
    """
    dtype = compute_dtype(logits)
    x = to_dtype(logits, dtype)
    num_rows, num_classes = x.shape
    need_grad = needs[0]
    loss, grad, scale = sigmoid_focal_kernel(x, None, None, float(beta), 0.0,
                                             0.0, False, need_grad)
    rows = loss.sum(dim=1)
    if num_classes > 0:
        foreground = labels < num_classes
        flat = torch.arange(num_rows, device=x.device) * num_classes + \
            labels.clamp(max=num_classes - 1)
        label_logit = x.take(flat)
        label_prob = torch.sigmoid(label_logit)
        score = to_dtype(scores, dtype)
        bce = F.binary_cross_entropy_with_logits(label_logit, score,
                                                 reduction='none')
        diff = label_prob - score
        modulator = diff.abs().pow(beta)
        rows = rows + torch.where(foreground,
                                  modulator * bce - loss.take(flat), 0)
        if grad is not None:
            slope = beta * label_prob * (1 - label_prob) * bce / diff
            label_grad = torch.where(diff != 0,
                                     modulator * (slope + diff), 0)
            grad.put_(flat, torch.where(foreground, label_grad / scale,
                                        grad.take(flat)))
    return rows, (grad, None, None), scale


def _quality_focal_plain(logits: Tensor, labels: Tensor, scores: Tensor, *,
                         beta: float) -> Tensor:
    """The value of :func:`quality_focal_kernel` by autograd ops."""
    with dispatch.autocast_off(logits):
        dtype = compute_dtype(logits)
        return quality_focal_loss_labels(to_dtype(logits, dtype), labels,
                                         to_dtype(scores, dtype), beta)


def quality_focal_loss_soft(pred: Tensor, target: Tensor, beta: float = 2.0,
                            activated: bool = False) -> Tensor:
    """Per-row QFL for a soft target of ``pred``'s shape (N, C, ...).

    Non-zero targets use ``|t - p| ** beta * BCE(x, t)``, zeros the negative
    form; summed over dim 1.
    """
    prob, neg_ce = _negative_terms(pred, activated)
    negative = prob.pow(beta) * neg_ce
    positive = _bce(pred, target, activated) * (target - prob).abs().pow(beta)
    return torch.where(target != 0, positive, negative).sum(dim=1)


def quality_focal_loss(pred: Tensor,
                       target: Union[Tensor, Tuple[Tensor, Tensor]],
                       weight: Optional[Tensor] = None,
                       beta: float = 2.0,
                       reduction: str = 'mean',
                       avg_factor: Optional[Union[float, Tensor]] = None,
                       activated: bool = False) -> Tensor:
    """Quality focal loss (Li et al. 2020), weighted and reduced per row.

    ``QFL = |y - p| ** beta * BCE(x, y)`` summed over the classes of a row.

    Args:
        pred (Tensor): logits (N, C), or probabilities if ``activated``.
        target (tuple | Tensor): ``(labels, scores)``, labels (N,) in
            ``[0, C]`` (``C`` is background) and quality scores (N,); or a
            soft target of ``pred``'s shape.
        weight (Tensor, optional): per-row weight (N,).
        beta (float): focusing exponent, ``>= 0``.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean.
        activated (bool): ``pred`` holds probabilities.

    Returns:
        Tensor: (N,) for ``'none'``, else a scalar; ``pred``'s dtype.
    """
    return _quality_focal_loss('quality_focal_loss', pred, target, weight,
                               beta, reduction, avg_factor, activated)


def _check_quality_inputs(loss_name, pred, target, weight, reduction,
                          avg_factor) -> None:
    """The one validator of QFL: shapes, dtypes, label range."""
    Reduction(loss_name, None, reduction, avg_factor).checked()
    _check_float_pred(loss_name, pred)
    if isinstance(target, Tensor):
        if pred.shape != target.shape:
            raise ValueError(f'{loss_name}: pred has shape '
                             f'{tuple(pred.shape)} but target has shape '
                             f'{tuple(target.shape)}')
        if pred.dim() < 2:
            raise ValueError(f'{loss_name}: pred must have shape (N, C, ...) '
                             f'but has shape {tuple(pred.shape)}')
        check_weight_shape(loss_name, weight,
                           pred.shape[:1] + pred.shape[2:])
        return
    if not isinstance(target, (tuple, list)) or len(target) != 2:
        raise TypeError(f'{loss_name}: target must be a tensor or a '
                        f'(labels, scores) pair, but got '
                        f'{type(target).__name__}')
    labels, scores = target
    check_tensor(loss_name, 'labels', labels)
    check_tensor(loss_name, 'scores', scores)
    if pred.dim() != 2 or labels.shape != (pred.shape[0], ) or \
            scores.shape != (pred.shape[0], ):
        raise ValueError(f'{loss_name}: pred must have shape (N, C) and '
                         f'labels and scores shape (N,), but got pred '
                         f'{tuple(pred.shape)}, labels '
                         f'{tuple(labels.shape)}, scores '
                         f'{tuple(scores.shape)}')
    check_integer_labels(loss_name, labels, 'labels')
    check_label_range(loss_name, labels, pred.shape[1], high_inclusive=True,
                      argument='labels')
    check_weight_shape(loss_name, weight, pred.shape[:1])


def _quality_focal_loss(loss_name, pred, target, weight, beta, reduction,
                        avg_factor, activated):
    _check_quality_inputs(loss_name, pred, target, weight, reduction,
                          avg_factor)
    with dispatch.autocast_off(pred):
        dtype = compute_dtype(pred)
        x = to_dtype(pred, dtype)
        if weight is not None:
            weight = to_dtype(weight, dtype)
        rule = Reduction(loss_name, weight, reduction, avg_factor)
        if isinstance(target, Tensor):
            loss = quality_focal_loss_soft(x, to_dtype(target, dtype), beta,
                                           activated)
            return restore_dtype(rule.apply(loss), pred)
        labels, scores = target
        if activated or scores.requires_grad or not dispatch.use_fast(
                'QualityFocalLoss', pred, rows=pred.shape[0]):
            loss = quality_focal_loss_labels(x, labels,
                                             to_dtype(scores, dtype), beta,
                                             activated)
        else:
            beta = float(beta)
            loss = gradient_in_forward(
                functools.partial(quality_focal_kernel, beta=beta),
                functools.partial(_quality_focal_plain, beta=beta), pred,
                labels, scores)
        return restore_dtype(rule.apply(loss), pred)


# ---------------------------------------------------------------------------
# Distribution focal loss
# ---------------------------------------------------------------------------
def distribution_focal_loss(pred: Tensor,
                            label: Tensor,
                            weight: Optional[Tensor] = None,
                            reduction: str = 'mean',
                            avg_factor: Optional[Union[float, Tensor]] = None
                            ) -> Tensor:
    """Distribution focal loss (Li et al. 2020), weighted and reduced.

    ``-((l + 1 - y) log S_l + (y - l) log S_(l+1))`` with ``l = floor(y)``
    and ``S`` the softmax of a row. A target at the last bin (``y = n``)
    gives ``-log S_n`` (mmdet indexes past the end there).

    Args:
        pred (Tensor): logits of the distribution (N, n + 1).
        label (Tensor): targets (N,) in ``[0, n]``.
        weight (Tensor, optional): per-row weight (N,).
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean.

    Returns:
        Tensor: (N,) for ``'none'``, else a scalar; ``pred``'s dtype.
    """
    return _distribution_focal_loss('distribution_focal_loss', pred, label,
                                    weight, reduction, avg_factor)


def _check_distances(loss_name: str, label: Tensor, last: int) -> None:
    """Raise unless every distance lies in ``[0, last]``: read on the host
    where that costs nothing, queued on the device elsewhere (as
    :func:`mmloss.checks.check_label_range`)."""
    if label.numel() == 0:
        return
    low, high = torch.aminmax(label.detach())
    if dispatch.tuning(label).cpu_kernels:
        if not (float(low) >= 0 and float(high) <= last):
            raise ValueError(f'{loss_name}: target must lie in [0, {last}] '
                             f'for pred with {last + 1} bins, but got values '
                             f'in [{float(low)}, {float(high)}]')
    else:
        torch._assert_async((low >= 0) & (high <= last),
                            f'{loss_name}: target out of [0, {last}]')


def _distribution_focal_loss(loss_name, pred, label, weight, reduction,
                             avg_factor):
    Reduction(loss_name, None, reduction, avg_factor).checked()
    _check_float_pred(loss_name, pred)
    check_tensor(loss_name, 'target', label)
    if pred.dim() != 2 or label.shape != (pred.shape[0], ):
        raise ValueError(f'{loss_name}: pred must have shape (N, n + 1) and '
                         f'target shape (N,), but got pred '
                         f'{tuple(pred.shape)} and target '
                         f'{tuple(label.shape)}')
    if label.dtype == torch.bool or label.dtype.is_complex:
        raise TypeError(f'{loss_name}: target must hold real distances, but '
                        f'has dtype {label.dtype}')
    _check_distances(loss_name, label, pred.shape[1] - 1)
    check_weight_shape(loss_name, weight, label.shape)
    with dispatch.autocast_off(pred):
        dtype = compute_dtype(pred)
        if weight is not None:
            weight = to_dtype(weight, dtype)
        rule = Reduction(loss_name, weight, reduction, avg_factor)
        if label.requires_grad or not dispatch.use_fast(
                'DistributionFocalLoss', pred, rows=pred.shape[0]):
            loss = distribution_focal_rows(pred, label)
        else:
            loss = gradient_in_forward(distribution_focal_kernel,
                                       _distribution_focal_plain, pred,
                                       label)
        return restore_dtype(rule.apply(loss), pred)


def _bins(label: Tensor, num_bins: int, dtype: torch.dtype):
    """Left and right bin of each distance and their weights."""
    label = to_dtype(label, dtype)
    left = label.long()
    right = (left + 1).clamp(max=num_bins - 1)
    return left, right, (left + 1).to(dtype) - label, label - left.to(dtype)


def distribution_focal_rows(pred: Tensor, label: Tensor) -> Tensor:
    """The plain per-row DFL (N,) by ``log_softmax`` (autograd, any order;
    differentiable in ``label`` too, as mmdet's), float32 at least."""
    dtype = compute_dtype(pred)
    left, right, weight_left, weight_right = _bins(label, pred.shape[1],
                                                   dtype)
    log_prob = F.log_softmax(to_dtype(pred, dtype), dim=1)
    return -(log_prob.gather(1, left[:, None]).squeeze(1) * weight_left +
             log_prob.gather(1, right[:, None]).squeeze(1) * weight_right)


def distribution_focal_kernel(needs, pred: Tensor, label: Tensor):
    """Per-row DFL (N,) with its gradient, the engine kernel
    (:class:`~mmloss.engine.functions.GradientInForward`).

    With ``S = softmax(x)`` and the two bins ``l``, ``l + 1`` weighted
    ``w_l = l + 1 - y``, ``w_r = y - l``, the gradient is ``S - w_l e_l -
    w_r e_(l+1)``: one softmax (whose two picked entries give the loss, from
    the logits where they underflowed; see :func:`mmloss.losses.
    cross_entropy.accurate_neg_log`) and two sparse updates. ``label``
    gets no gradient (the caller takes the plain formula when it needs
    one).
    """
    dtype = compute_dtype(pred)
    num_rows, num_bins = pred.shape
    left, right, weight_left, weight_right = _bins(label, num_bins, dtype)
    logits = to_dtype(pred, dtype)
    prob = torch.softmax(logits, dim=1)
    rows_only = dispatch.cpu_kernels(pred)
    columns = []
    loss = None
    for index, weight in ((left, weight_left), (right, weight_right)):
        column = index.unsqueeze(1)
        picked = prob.gather(1, column).squeeze(1)
        # -log S at the bin, from the logits where S underflowed
        term = accurate_neg_log(picked, logits, column, rows_only).mul_(
            weight)
        loss = term if loss is None else loss.add_(term)
        columns.append((column, weight))
    grad = None
    if needs[0]:
        grad = prob
        # at the last bin left == right: scatter_add_ adds both weights
        for column, weight in columns:
            grad.scatter_add_(1, column, weight.neg().unsqueeze(1))
    return loss, (grad, None), None


def _distribution_focal_plain(pred: Tensor, label: Tensor) -> Tensor:
    """The value of :func:`distribution_focal_kernel` by autograd ops."""
    with dispatch.autocast_off(pred):
        return distribution_focal_rows(pred, label)


# ---------------------------------------------------------------------------
# registered modules
# ---------------------------------------------------------------------------
@MODELS.register_module()
class VarifocalLoss(BaseLoss):
    """Varifocal loss (Zhang et al. 2021), twin of mmdet's ``VarifocalLoss``.

    Paper: Zhang et al., "VarifocalNet", CVPR 2021, https://arxiv.org/abs/2008.13367

    See :func:`varifocal_loss`.

    Args:
        use_sigmoid (bool): must be True.
        alpha (float): weight of the negatives, ``>= 0``. Defaults to 0.75.
        gamma (float): focusing exponent. Defaults to 2.0.
        iou_weighted (bool): weight positives by their IoU target.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): factor applied to the loss.
    """

    def __init__(self,
                 use_sigmoid: bool = True,
                 alpha: float = 0.75,
                 gamma: float = 2.0,
                 iou_weighted: bool = True,
                 reduction: str = 'mean',
                 loss_weight: float = 1.0) -> None:
        super().__init__(reduction, loss_weight)
        self.use_sigmoid = _check_use_sigmoid(self.loss_name, use_sigmoid)
        self.alpha = check_positive(self.loss_name, 'alpha', alpha,
                                    allow_zero=True)
        self.gamma = check_positive(self.loss_name, 'gamma', gamma,
                                    allow_zero=True)
        self.iou_weighted = bool(iou_weighted)

    def forward(self,
                pred: Tensor,
                target: Tensor,
                weight: Optional[Tensor] = None,
                avg_factor: Optional[int] = None,
                reduction_override: Optional[str] = None) -> Tensor:
        """Weighted VFL of logits (N, C) and IoU-aware targets (N, C)."""
        reduction = self.resolve_reduction(reduction_override)
        return self.apply_loss_weight(_varifocal_loss(
            self.loss_name, pred, target, weight, self.alpha, self.gamma,
            self.iou_weighted, reduction, avg_factor))


@MODELS.register_module()
class QualityFocalLoss(BaseLoss):
    """Quality focal loss (Li et al. 2020), twin of mmdet's QFL.

    Paper: Li et al., "Generalized Focal Loss", NeurIPS 2020, https://arxiv.org/abs/2006.04388

    See :func:`quality_focal_loss`.

    Args:
        use_sigmoid (bool): must be True.
        beta (float): focusing exponent. Defaults to 2.0.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): factor applied to the loss.
        activated (bool): ``pred`` holds probabilities, not logits.
    """

    def __init__(self,
                 use_sigmoid=True,
                 beta=2.0,
                 reduction='mean',
                 loss_weight=1.0,
                 activated=False):
        super().__init__(reduction, loss_weight)
        self.use_sigmoid = _check_use_sigmoid(self.loss_name, use_sigmoid)
        self.beta = check_positive(self.loss_name, 'beta', beta,
                                   allow_zero=True)
        self.activated = bool(activated)

    def forward(self,
                pred,
                target,
                weight=None,
                avg_factor=None,
                reduction_override=None):
        """Weighted QFL; ``target`` is ``(labels, scores)`` or soft (N, C)."""
        reduction = self.resolve_reduction(reduction_override)
        return self.apply_loss_weight(_quality_focal_loss(
            self.loss_name, pred, target, weight, self.beta, reduction,
            avg_factor, self.activated))


@MODELS.register_module()
class DistributionFocalLoss(BaseLoss):
    """Distribution focal loss (Li et al. 2020), twin of mmdet's DFL.

    Paper: Li et al., "Generalized Focal Loss", NeurIPS 2020, https://arxiv.org/abs/2006.04388

    See :func:`distribution_focal_loss`.

    Args:
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): factor applied to the loss.
    """

    def __init__(self, reduction='mean', loss_weight=1.0):
        super().__init__(reduction, loss_weight)

    def forward(self,
                pred,
                target,
                weight=None,
                avg_factor=None,
                reduction_override=None):
        """Weighted DFL of logits (N, n + 1) and distances (N,)."""
        reduction = self.resolve_reduction(reduction_override)
        return self.apply_loss_weight(_distribution_focal_loss(
            self.loss_name, pred, target, weight, reduction, avg_factor))
