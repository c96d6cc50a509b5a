"""Quality focal loss (Li et al., "Generalized Focal Loss", NeurIPS 2020):
the public function, the plain formulas (label and soft-target forms) and
the kernel of the label form's fast path.

The label form never builds an ``N x C`` target: the background formula
``p ** beta * softplus(x)`` is summed per row and each foreground row's
label entry is corrected.
"""
import functools
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ...checks import (check_integer_labels, check_label_range,
                       check_tensor, check_weight_shape)
from ...engine import dispatch
from ...engine.functions import gradient_in_forward
from ...errors import LossTypeError, LossValueError
from ...precision import compute_dtype, restore_loss, to_dtype
from ...reduction import Reduction
from ..focal_kernels import (probability_cross_entropy,
                             sigmoid_focal_kernel)
from .common import _check_float_pred, _weighted_rule

__all__ = ['quality_focal_loss']


def _negative_terms(x: Tensor, activated: bool) -> Tuple[Tensor, Tensor]:
    """``(p, -log(1 - p))`` for logits or (``activated``) probabilities
    (then finite in value and gradient at ``p = 1``, as mmdet's)."""
    if activated:
        return x, probability_cross_entropy(x, 0.0)
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
        Tensor: (N,) for ``'none'`` in ``pred``'s dtype, else a scalar
            in float32 at least (:func:`mmloss.precision.restore_loss`).
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
            raise LossValueError(f'{loss_name}: pred has shape '
                                 f'{tuple(pred.shape)} but target has shape '
                                 f'{tuple(target.shape)}')
        if pred.dim() < 2:
            raise LossValueError(
                f'{loss_name}: pred must have shape (N, C, ...) '
                f'but has shape {tuple(pred.shape)}')
        check_weight_shape(loss_name, weight,
                           pred.shape[:1] + pred.shape[2:])
        return
    if not isinstance(target, (tuple, list)) or len(target) != 2:
        raise LossTypeError(f'{loss_name}: target must be a tensor or a '
                            f'(labels, scores) pair, but got '
                            f'{type(target).__name__}')
    labels, scores = target
    check_tensor(loss_name, 'labels', labels)
    check_tensor(loss_name, 'scores', scores)
    if pred.dim() != 2 or labels.shape != (pred.shape[0], ) or \
            scores.shape != (pred.shape[0], ):
        raise LossValueError(f'{loss_name}: pred must have shape (N, C) and '
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
        dtype, weight, rule = _weighted_rule(loss_name, pred, weight,
                                             reduction, avg_factor)
        x = to_dtype(pred, dtype)
        if isinstance(target, Tensor):
            loss = quality_focal_loss_soft(x, to_dtype(target, dtype), beta,
                                           activated)
            return restore_loss(rule.apply(loss), pred, rule.reduces)
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
        return restore_loss(rule.apply(loss), pred, rule.reduces)
