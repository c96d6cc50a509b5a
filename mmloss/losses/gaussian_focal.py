"""Gaussian focal loss: focal loss for keypoint heatmaps.

CornerNet (Law and Deng, "CornerNet: Detecting Objects as Paired Keypoints",
ECCV 2018, https://arxiv.org/abs/1808.01244) and CenterNet supervise a
predicted heatmap ``p`` (probabilities, any shape) with a Gaussian-splatted
target ``y`` of the same shape. Peaks (``y == 1``) are positives, everything
else a negative whose penalty shrinks near a peak::

    pos = -log(p + eps) * (1 - p) ** alpha                 where y == 1
    neg = -log(1 - p + eps) * p ** alpha * (1 - y) ** gamma
    loss = pos_weight * pos + neg_weight * neg              (eps = 1e-12)

The CenterNet-update form names the positives explicitly instead
(``pos_inds`` rows of a (N, C) ``pred`` with ``pos_labels`` columns);
positives and negatives are then reduced separately and added.

:func:`gaussian_focal_kernel` computes the gradient analytically in the
forward pass; it runs through
:class:`mmloss.engine.functions.GradientInForward`, which saves the gradient
and, for a backward with ``create_graph=True``, differentiates the plain
formula (:func:`gaussian_focal_elementwise`) instead.
"""
import functools
from typing import Optional, Union

import torch
from torch import Tensor

from ..checks import (check_float, check_integer_labels, check_label_range,
                      check_positive, check_same_shape, check_tensor,
                      check_weight_shape)
from ..engine import dispatch
from ..engine.functions import gradient_in_forward
from ..errors import LossValueError
from ..precision import compute_dtype, restore_loss, to_dtype
from ..reduction import Reduction, weighted_total
from ..registry import MODELS
from ..typing_utils import AvgFactor, OptStr, OptTensor
from .base import BaseLoss
from .focal_kernels import elementwise_in_blocks

__all__ = [
    'gaussian_focal_loss', 'gaussian_focal_loss_with_pos_inds',
    'GaussianFocalLoss'
]

_EPS = 1e-12


def _negative_loss(pred: Tensor, target: Tensor, alpha: float,
                   gamma: float) -> Tensor:
    return -torch.log(1 - pred + _EPS) * pred.pow(alpha) * \
        (1 - target).pow(gamma)


def _positive_loss(pred: Tensor, alpha: float) -> Tensor:
    return -torch.log(pred + _EPS) * (1 - pred).pow(alpha)


def gaussian_focal_elementwise(pred: Tensor, target: Tensor, alpha: float,
                               gamma: float, pos_weight: float,
                               neg_weight: float,
                               with_positives: bool = True) -> Tensor:
    """The plain element-wise loss (autograd, any order; differentiable in
    ``target`` too), float32 at least. ``with_positives=False`` leaves out
    the ``y == 1`` term (the index form adds its positives itself)."""
    dtype = compute_dtype(pred)
    p, y = to_dtype(pred, dtype), to_dtype(target, dtype)
    loss = neg_weight * _negative_loss(p, y, alpha, gamma)
    if with_positives:
        loss = loss + pos_weight * _positive_loss(p, alpha) * y.eq(1)
    return loss


def _pow(base: Tensor, exponent: float) -> Tensor:
    """``base ** exponent``, common exponents without ``pow``."""
    if exponent == 1:
        return base
    if exponent == 2:
        return base * base
    if exponent == 4:
        square = base * base
        return square.mul_(square)
    return base.pow(exponent)


def gaussian_focal_kernel(pred: Tensor, target: Tensor,
                          weight: Optional[Tensor], alpha: float,
                          gamma: float, pos_weight: float, neg_weight: float,
                          with_positives: bool, reduce_sum: bool,
                          need_grad: bool):
    """Gaussian focal loss (element-wise or summed) and ``d loss / d pred``.

    With ``a = 1 - p``, ``lp = log(p + eps)``, ``la = log(a + eps)`` and
    ``m = (1 - y) ** gamma``::

        d pos / dp = -a**alpha / (p + eps) + alpha * a**(alpha-1) * lp
        d neg / dp = m * (p**alpha / (a + eps) - alpha * p**(alpha-1) * la)

    ``with_positives=False`` leaves out the ``y == 1`` term (the index form
    adds its positives separately). Returns ``(loss, grad)``.
    """
    away = 1 - pred
    log_away = torch.add(away, _EPS).log_()
    pred_pow = _pow(pred, alpha)
    modulator = _pow(1 - target, gamma)
    if neg_weight != 1:
        modulator = modulator * neg_weight
    loss = log_away * pred_pow
    loss.mul_(modulator).neg_()
    grad = None
    if need_grad:
        # p**alpha / (a + eps) - alpha p**(alpha-1) la, times m
        grad = torch.add(away, _EPS).reciprocal_().mul_(pred_pow)
        grad.sub_(_pow(pred, alpha - 1) * log_away, alpha=alpha)
        grad.mul_(modulator)
    del log_away, modulator
    if with_positives:
        positive = target.eq(1).to(pred.dtype)
        log_pred = torch.add(pred, _EPS).log_()
        away_pow = _pow(away, alpha)
        if pos_weight != 1:
            positive.mul_(pos_weight)
        loss.addcmul_(log_pred * away_pow, positive, value=-1)
        if need_grad:
            pos_grad = _pow(away, alpha - 1) * log_pred
            pos_grad.mul_(alpha)
            pos_grad.sub_(away_pow / torch.add(pred, _EPS))
            grad.addcmul_(pos_grad, positive)
    if weight is not None and grad is not None:
        grad = grad * weight
    return weighted_total(loss, weight, reduce_sum), grad


def _engine_kernel(needs, pred: Tensor, target: Tensor,
                   weight: Optional[Tensor], *, reduce_sum: bool, **params):
    """:func:`gaussian_focal_kernel` as the engine's kernel
    (:class:`~mmloss.engine.functions.GradientInForward`), over row blocks
    of the heatmaps (:func:`~.focal_kernels.elementwise_in_blocks`)."""
    dtype = compute_dtype(pred)
    kernel = functools.partial(gaussian_focal_kernel, reduce_sum=reduce_sum,
                               need_grad=needs[0], **params)
    loss, grad = elementwise_in_blocks(
        kernel, to_dtype(pred, dtype), to_dtype(target, dtype), weight,
        reduce_sum=reduce_sum, need_grad=needs[0])
    return loss, (grad, None, None), None


def _engine_plain(pred: Tensor, target: Tensor, weight: Optional[Tensor], *,
                  reduce_sum: bool, **params) -> Tensor:
    """The value of :func:`_engine_kernel` by autograd ops."""
    with dispatch.autocast_off(pred):
        loss = gaussian_focal_elementwise(pred, target, **params)
        if weight is not None:
            loss = loss * weight
        return loss.sum() if reduce_sum else loss


def _heatmap_loss(pred: Tensor, target: Tensor, rule: Reduction,
                  **params) -> Tensor:
    """The element-wise loss weighted and reduced by ``rule``: the fused
    kernel, the element-wise kernel or the plain formula, as the dispatcher
    decides. Float32 at least."""
    dtype = compute_dtype(pred)
    rows = pred.shape[0] if pred.dim() else 1
    if target.requires_grad or not dispatch.use_fast('GaussianFocalLoss',
                                                      pred, rows=rows):
        return rule.apply(gaussian_focal_elementwise(pred, target, **params))

    def run(reduce_sum: bool, weight: Optional[Tensor]) -> Tensor:
        return gradient_in_forward(
            functools.partial(_engine_kernel, reduce_sum=reduce_sum,
                              **params),
            functools.partial(_engine_plain, reduce_sum=reduce_sum,
                              **params), pred, target, weight)

    return rule.run_kernel(run, dtype, pred.device, pred.numel())


def _check_inputs(loss_name: str, pred: Tensor, target: Tensor) -> None:
    check_float(loss_name, 'pred', pred)
    check_tensor(loss_name, 'target', target)
    check_same_shape(loss_name, pred, target)


def gaussian_focal_loss(pred: Tensor, target: Tensor,
                        weight: OptTensor = None, alpha: float = 2.0,
                        gamma: float = 4.0, pos_weight: float = 1.0,
                        neg_weight: float = 1.0, reduction: str = 'mean',
                        avg_factor: AvgFactor = None) -> Tensor:
    """Gaussian focal loss, element-wise then weighted and reduced.

    See the module docstring for the formula; positives are ``y == 1``.

    Args:
        pred (Tensor): predicted heatmap (probabilities), any shape.
        target (Tensor): Gaussian target heatmap of ``pred``'s shape.
        weight (Tensor, optional): broadcast to the element-wise loss.
        alpha (float): exponent of the prediction.
        gamma (float): exponent of ``1 - y`` for the negatives.
        pos_weight (float): factor of the positive part.
        neg_weight (float): factor of the negative part.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean.

    Returns:
        Tensor: ``pred``'s shape and dtype for ``'none'``, else a scalar in
        float32 at least (:func:`mmloss.precision.restore_loss`).
    """
    return _gaussian_focal_loss('gaussian_focal_loss', pred, target, weight,
                                alpha, gamma, pos_weight, neg_weight,
                                reduction, avg_factor)


def _gaussian_focal_loss(loss_name, pred, target, weight, alpha, gamma,
                         pos_weight, neg_weight, reduction, avg_factor):
    Reduction.check(loss_name, reduction, avg_factor)
    _check_inputs(loss_name, pred, target)
    check_weight_shape(loss_name, weight, pred.shape)
    with dispatch.autocast_off(pred):
        if weight is not None:
            weight = to_dtype(weight, compute_dtype(pred))
        rule = Reduction(loss_name, weight, reduction, avg_factor)
        loss = _heatmap_loss(pred, target, rule, alpha=float(alpha),
                             gamma=float(gamma),
                             pos_weight=float(pos_weight),
                             neg_weight=float(neg_weight),
                             with_positives=True)
        return restore_loss(loss, pred, rule.reduces)


def gaussian_focal_loss_with_pos_inds(
        pred: Tensor,
        target: Tensor,
        pos_inds: Tensor,
        pos_labels: Tensor,
        alpha: float = 2.0,
        gamma: float = 4.0,
        pos_weight: float = 1.0,
        neg_weight: float = 1.0,
        reduction: str = 'mean',
        avg_factor: AvgFactor = None) -> Tensor:
    """Gaussian focal loss with the positives given by index.

    ``pos = -log(p + eps) (1 - p) ** alpha`` at ``pred[pos_inds,
    pos_labels]`` and the negative term on every entry; each is reduced on
    its own (with ``avg_factor``), then
    ``pos_weight * pos + neg_weight * neg``. With ``'mean'`` and no
    positives, the positive part is 0 (mmdet: NaN).

    Args:
        pred (Tensor): predicted heatmap (N, C).
        target (Tensor): Gaussian target (N, C).
        pos_inds (Tensor): rows of the positives (M,), integers.
        pos_labels (Tensor): their classes (M,), integers in ``[0, C)``.
        others: as :func:`gaussian_focal_loss`; ``'none'`` is not defined
            here (the two parts have different shapes).

    Returns:
        Tensor: a scalar, float32 at least.
    """
    return _gaussian_focal_loss_with_pos_inds(
        'gaussian_focal_loss_with_pos_inds', pred, target, pos_inds,
        pos_labels, alpha, gamma, pos_weight, neg_weight, reduction,
        avg_factor)


def _check_rows(loss_name: str, pos_inds: Tensor, num_rows: int) -> None:
    """Raise unless every row index lies in ``[-N, N)`` (tensor indexing,
    as mmdet's ``pred[pos_inds]``): a ``ValueError`` naming the loss where
    the CPU kernels may read values, else a check queued on the device
    (as :func:`mmloss.checks.check_label_range`)."""
    if pos_inds.numel() == 0:
        return
    low, high = torch.aminmax(pos_inds)
    ok = (low >= -num_rows) & (high < num_rows)
    if not dispatch.tuning(pos_inds).cpu_kernels:
        torch._assert_async(ok, f'{loss_name}: pos_inds out of range')
    elif not bool(ok):
        raise LossValueError(f'{loss_name}: pos_inds holds values in '
                             f'[{int(low)}, {int(high)}], but pred has '
                             f'{num_rows} rows (valid: [{-num_rows}, '
                             f'{num_rows}))')


def _gaussian_focal_loss_with_pos_inds(loss_name, pred, target, pos_inds,
                                       pos_labels, alpha, gamma, pos_weight,
                                       neg_weight, reduction, avg_factor):
    rule = Reduction(loss_name, None, reduction, avg_factor).checked()
    _check_inputs(loss_name, pred, target)
    if reduction == 'none':
        raise LossValueError(
            f"{loss_name}: reduction='none' is not defined with "
            f'pos_inds (the positive part has shape (M, 1), '
            f'the negative part {tuple(pred.shape)})')
    if pos_labels is None:
        raise LossValueError(f'{loss_name}: pos_labels must be given with '
                             f'pos_inds')
    check_tensor(loss_name, 'pos_inds', pos_inds)
    check_tensor(loss_name, 'pos_labels', pos_labels)
    check_integer_labels(loss_name, pos_inds, 'pos_inds')
    check_integer_labels(loss_name, pos_labels, 'pos_labels')
    if pred.dim() != 2 or pos_labels.dim() != 1 or \
            pos_inds.shape != pos_labels.shape:
        raise LossValueError(
            f'{loss_name}: pred must have shape (N, C) and '
            f'pos_inds and pos_labels shape (M,), but got pred '
            f'{tuple(pred.shape)}, pos_inds '
            f'{tuple(pos_inds.shape)}, pos_labels '
            f'{tuple(pos_labels.shape)}')
    _check_rows(loss_name, pos_inds, pred.shape[0])
    check_label_range(loss_name, pos_labels, pred.shape[1],
                      argument='pos_labels')
    with dispatch.autocast_off(pred):
        p = to_dtype(pred, compute_dtype(pred))
        pos_pred = p[pos_inds].gather(1, pos_labels.long().unsqueeze(1))
        pos = rule.apply(_positive_loss(pos_pred, alpha))
        neg = _heatmap_loss(pred, target, rule, alpha=float(alpha),
                            gamma=float(gamma), pos_weight=1.0,
                            neg_weight=float(neg_weight),
                            with_positives=False)
        return restore_loss(pos_weight * pos + neg, pred, True)


@MODELS.register_module()
class GaussianFocalLoss(BaseLoss):
    """Gaussian focal loss (CornerNet), twin of mmdet's GaussianFocalLoss.

    Paper: Law and Deng, "CornerNet", ECCV 2018, https://arxiv.org/abs/1808.01244

    See :func:`gaussian_focal_loss` and
    :func:`gaussian_focal_loss_with_pos_inds`.

    Args:
        alpha (float): exponent of the prediction. Defaults to 2.0.
        gamma (float): exponent of ``1 - y`` for negatives. Defaults to 4.0.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): factor applied to the loss.
        pos_weight (float): factor of the positive part.
        neg_weight (float): factor of the negative part.
    """

    def __init__(self, alpha: float = 2.0, gamma: float = 4.0,
                 reduction: str = 'mean', loss_weight: float = 1.0,
                 pos_weight: float = 1.0, neg_weight: float = 1.0) -> None:
        super().__init__(reduction, loss_weight)
        name = self.loss_name
        self.alpha = check_positive(name, 'alpha', alpha, allow_zero=True)
        self.gamma = check_positive(name, 'gamma', gamma, allow_zero=True)
        self.pos_weight = check_positive(name, 'pos_weight', pos_weight,
                                         allow_zero=True)
        self.neg_weight = check_positive(name, 'neg_weight', neg_weight,
                                         allow_zero=True)

    def forward(self, pred: Tensor, target: Tensor,
                pos_inds: OptTensor = None, pos_labels: OptTensor = None,
                weight: OptTensor = None,
                avg_factor: Optional[Union[int, float]] = None,
                reduction_override: OptStr = None) -> Tensor:
        """Heatmap loss; with ``pos_inds``/``pos_labels`` the index form.

        ``weight`` applies to the element-wise form only (as in mmdet).
        """
        reduction = self.resolve_reduction(reduction_override)
        if pos_inds is not None:
            loss = _gaussian_focal_loss_with_pos_inds(
                self.loss_name, pred, target, pos_inds, pos_labels,
                self.alpha, self.gamma, self.pos_weight, self.neg_weight,
                reduction, avg_factor)
        else:
            loss = _gaussian_focal_loss(self.loss_name, pred, target, weight,
                                        self.alpha, self.gamma,
                                        self.pos_weight, self.neg_weight,
                                        reduction, avg_factor)
        return self.apply_loss_weight(loss)
