"""Element-wise regression losses of ``d = pred - target``: L1, smooth L1,
balanced L1 and squared error.

============  ===========================================================
loss          element-wise value of ``x = |d|``
============  ===========================================================
L1            ``x``
smooth L1     ``0.5 * x^2 / beta`` if ``x < beta`` else ``x - 0.5 * beta``
              (Girshick, *Fast R-CNN*, ICCV 2015); ``beta < 1e-5`` is L1
balanced L1   ``alpha / b * (b x + 1) * ln(b x / beta + 1) - alpha x`` if
              ``x < beta`` else ``gamma x + gamma / b - alpha beta``, with
              ``b = e^(gamma / alpha) - 1`` (Pang et al., *Libra R-CNN*,
              CVPR 2019, https://arxiv.org/abs/1904.02701)
MSE           ``x^2``
============  ===========================================================

Each is multiplied by ``weight`` (broadcast) and reduced by MMDetection's
rules (:func:`~mmloss.reduction.weight_reduce_loss`): ``'mean'`` divides by
the number of elements, or by ``avg_factor + eps`` when given.

Speed: each loss runs through
:class:`~mmloss.gradients.PrecomputedGradientFunction`, which computes the
value and its slope ``d loss / d pred`` in one go without autograd and
keeps only the slope (times ``weight``) for backward: one tensor the size
of ``pred``, which is what MMDetection's graph keeps at least (its ``|d|``
input), and backward is a single multiplication, in place. The
plain autograd formulas stay available with ``fast=False``; the fast path
also steps aside for a ``weight`` or ``avg_factor`` that requires grad.

Numerics: half inputs are computed in float32 and the loss is returned in
the input dtype, so the square of an fp16 error over 256 (which overflows
in MMDetection) stays finite whenever the reduced loss fits in fp16.

Deliberate differences from MMDetection 3.3:

* ``SmoothL1Loss`` accepts ``beta = 0`` and takes any ``beta < 1e-5`` as L1
  (as fvcore does: below that the quadratic zone is numerically void and
  ``beta = 0`` would divide by zero); MMDetection asserts ``beta > 0``. For
  ``0 < beta < 1e-5`` the two differ by at most ``beta / 2`` per element.
* MMDetection's ``L1Loss``/``SmoothL1Loss`` return ``(pred * weight).sum()``
  when no weight is positive (a host sync, and for ``'none'`` a scalar).
  Here the loss is always ``weight * loss`` reduced: all-zero weights give
  the same 0 for ``'mean'``/``'sum'`` and an all-zero tensor for ``'none'``.
* The mean of an empty input is 0 (connected to the graph), also for MSE,
  where MMDetection returns NaN.
"""
import math
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from ..checks import (check_positive, check_reduction, check_same_shape,
                      check_tensor, check_weight_shape)
from ..gradients import PrecomputedGradientFunction
from ..precision import compute_dtype, to_dtype
from ..reduction import FLOAT32_EPS, weight_reduce_loss
from ..registry import MODELS
from .base import BaseLoss

__all__ = [
    'l1_loss', 'smooth_l1_loss', 'balanced_l1_loss', 'mse_loss', 'L1Loss',
    'SmoothL1Loss', 'BalancedL1Loss', 'MSELoss'
]

# fvcore's threshold below which smooth L1 is plain L1
SMOOTH_L1_MIN_BETA = 1e-5

AvgFactor = Optional[Union[float, Tensor]]


# --------------------------------------------------------------------------
# The shared machinery
# --------------------------------------------------------------------------
def _check_inputs(loss_name: str, pred: Tensor, target: Tensor,
                  weight: Optional[Tensor], reduction: str,
                  avg_factor: AvgFactor) -> None:
    check_tensor(loss_name, 'pred', pred)
    check_tensor(loss_name, 'target', target)
    if not pred.dtype.is_floating_point:
        raise TypeError(f'{loss_name}: pred must be a float tensor, but has '
                        f'dtype {pred.dtype}')
    check_same_shape(loss_name, pred, target)
    check_weight_shape(loss_name, weight, pred.shape)
    check_reduction(loss_name, reduction)
    if reduction == 'sum' and avg_factor is not None:
        raise ValueError(f'{loss_name}: avg_factor can not be used with '
                         f'reduction="sum"')


def _needs_plain_path(weight: Optional[Tensor],
                      avg_factor: AvgFactor) -> bool:
    """The fast path gives no gradient to ``weight`` or ``avg_factor``."""
    return (weight is not None and weight.requires_grad) or (
        isinstance(avg_factor, Tensor) and avg_factor.requires_grad)


def _reduced(value: Tensor, coeff: Tensor, scale, weight: Optional[Tensor],
             reduction: str, avg_factor: AvgFactor, numel: int,
             weighted_value: bool = False):
    """Apply ``weight`` and the reduction to ``(value, coeff, scale)``.

    ``value`` is element-wise; ``coeff`` is the element-wise slope, already
    weighted when ``weighted_value`` is True (then ``value`` is the weighted
    total, already summed).
    """
    if not weighted_value:
        if weight is not None:
            coeff = coeff.mul_(weight)
            if reduction == 'none':
                value = value.mul_(weight)
            elif weight.shape == value.shape:
                value = torch.dot(value.reshape(-1), weight.reshape(-1))
            else:
                value = value.mul_(weight).sum()
        elif reduction != 'none':
            value = value.sum()
    if reduction != 'mean':
        return value, coeff, scale
    if avg_factor is None:
        if numel == 0:
            return value, coeff, scale
        return value / numel, coeff, scale / numel
    denominator = avg_factor + FLOAT32_EPS
    if isinstance(denominator, Tensor):
        denominator = denominator.to(value.dtype)
    return value / denominator, coeff, scale / denominator


def _difference_loss(loss_name: str, pred: Tensor, target: Tensor,
                     weight: Optional[Tensor], reduction: str,
                     avg_factor: AvgFactor, fast: bool,
                     value_and_slope: Callable,
                     plain_value: Callable) -> Tensor:
    """Run a loss of ``d`` through the fast path or the plain formula.

    ``value_and_slope(d, weight, reduce)`` returns ``(value, coeff, scale,
    weighted)``: with ``weighted`` True, ``value`` is already the weighted
    sum and ``coeff`` already weighted. ``plain_value(d)`` is the
    element-wise formula for autograd.
    """
    _check_inputs(loss_name, pred, target, weight, reduction, avg_factor)
    dtype = compute_dtype(pred)
    if weight is not None:
        weight = weight.to(dtype)

    if not fast or _needs_plain_path(weight, avg_factor):
        loss = plain_value(pred.to(dtype) - target.to(dtype))
        return weight_reduce_loss(loss, weight, reduction,
                                  avg_factor).to(pred.dtype)

    def compute():
        # runs inside PrecomputedGradientFunction.forward: autograd is off
        diff = to_dtype(pred, dtype) - to_dtype(target, dtype)
        value, coeff, scale, weighted = value_and_slope(
            diff, weight, reduction != 'none')
        return _reduced(value, coeff, scale, weight, reduction, avg_factor,
                        pred.numel(), weighted)

    return to_dtype(PrecomputedGradientFunction.apply(pred, target, compute),
                    pred.dtype)


# --------------------------------------------------------------------------
# L1
# --------------------------------------------------------------------------
def _l1_value_and_slope(diff: Tensor, weight: Optional[Tensor],
                        reduce: bool):
    if reduce and weight is None:
        # the sum, then the slope sign(d) written over d: one fresh buffer
        # (on the CPU each fresh buffer costs page faults, about a pass)
        total = diff.abs().sum()
        return total, diff.sign_(), 1.0, True
    sign = torch.sign(diff)
    if reduce and weight.shape == diff.shape:
        # |d| * w = d * (sign(d) * w) exactly, in one dot product
        coeff = sign.mul_(weight)
        return torch.dot(diff.reshape(-1), coeff.reshape(-1)), coeff, 1.0, \
            True
    return diff.abs_(), sign, 1.0, False


def l1_loss(pred: Tensor,
            target: Tensor,
            weight: Optional[Tensor] = None,
            reduction: str = 'mean',
            avg_factor: AvgFactor = None,
            fast: bool = True) -> Tensor:
    """L1 loss ``|pred - target|``, weighted and reduced.

    Args:
        pred (Tensor): prediction, any shape (e.g. (N, 4) deltas).
        target (Tensor): target shaped like ``pred``.
        weight (Tensor, optional): element-wise weight, broadcast to
            ``pred``.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean.
        fast (bool): analytic backward (the slope computed in forward).

    Returns:
        Tensor: the loss, in ``pred``'s dtype.
    """
    return _difference_loss('L1Loss', pred, target, weight, reduction,
                            avg_factor, fast, _l1_value_and_slope,
                            torch.abs)


# --------------------------------------------------------------------------
# Smooth L1
# --------------------------------------------------------------------------
def _check_smooth_l1_beta(loss_name: str, beta) -> float:
    return float(check_positive(loss_name, 'beta', beta, allow_zero=True))


def smooth_l1_loss(pred: Tensor,
                   target: Tensor,
                   weight: Optional[Tensor] = None,
                   reduction: str = 'mean',
                   avg_factor: AvgFactor = None,
                   beta: float = 1.0,
                   fast: bool = True) -> Tensor:
    """Smooth L1 loss of ``x = |pred - target|``, weighted and reduced.

    ``0.5 * x^2 / beta`` for ``x < beta``, else ``x - 0.5 * beta``; its
    slope is ``clamp(d / beta, -1, 1)``. ``beta < 1e-5`` gives L1.

    Args:
        pred (Tensor): prediction, any shape.
        target (Tensor): target shaped like ``pred``.
        weight (Tensor, optional): element-wise weight, broadcast.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean.
        beta (float): the quadratic zone's half width (>= 0).
        fast (bool): analytic backward (the slope computed in forward).

    Returns:
        Tensor: the loss, in ``pred``'s dtype.
    """
    name = 'SmoothL1Loss'
    beta = _check_smooth_l1_beta(name, beta)
    if beta < SMOOTH_L1_MIN_BETA:
        return _difference_loss(name, pred, target, weight, reduction,
                                avg_factor, fast, _l1_value_and_slope,
                                torch.abs)

    def value_and_slope(diff, weight, reduce):
        # With c = clamp(d, -beta, beta) the loss is c * (d - c / 2) / beta
        # (d^2 / 2 beta inside, |d| - beta / 2 outside) and the slope is
        # c / beta: two fast passes and dot products, no branch masks.
        clamped = diff.clamp(-beta, beta)
        if reduce and weight is None:
            value = torch.dot(clamped.reshape(-1), diff.reshape(-1)) \
                - 0.5 * torch.dot(clamped.reshape(-1), clamped.reshape(-1))
            return value / beta, clamped, 1.0 / beta, True
        half_way = diff.sub_(clamped, alpha=0.5)          # d - c / 2
        if reduce and weight.shape == diff.shape:
            coeff = clamped.mul_(weight)
            value = torch.dot(coeff.reshape(-1), half_way.reshape(-1))
            return value / beta, coeff, 1.0 / beta, True
        return half_way.mul_(clamped).div_(beta), clamped, 1.0 / beta, False

    def plain_value(diff):
        x = diff.abs()
        return torch.where(x < beta, 0.5 * x * x / beta, x - 0.5 * beta)

    return _difference_loss(name, pred, target, weight, reduction,
                            avg_factor, fast, value_and_slope, plain_value)


# --------------------------------------------------------------------------
# Balanced L1
# --------------------------------------------------------------------------
def _balanced_l1_b(loss_name: str, alpha, gamma, beta) -> float:
    """Validate the parameters; return ``b = e^(gamma / alpha) - 1``."""
    for argument, value in (('alpha', alpha), ('gamma', gamma),
                            ('beta', beta)):
        check_positive(loss_name, argument, value)
    try:
        b = math.exp(gamma / alpha) - 1
    except OverflowError:
        b = math.inf
    if not math.isfinite(b):
        raise ValueError(f'{loss_name}: gamma / alpha = {gamma / alpha} is '
                         f'too large (e^(gamma / alpha) overflows)')
    return b


def balanced_l1_loss(pred: Tensor,
                     target: Tensor,
                     weight: Optional[Tensor] = None,
                     reduction: str = 'mean',
                     avg_factor: AvgFactor = None,
                     beta: float = 1.0,
                     alpha: float = 0.5,
                     gamma: float = 1.5,
                     fast: bool = True) -> Tensor:
    """Balanced L1 loss (Libra R-CNN) of ``x = |pred - target|``.

    ``alpha / b * (b x + 1) * ln(b x / beta + 1) - alpha x`` for
    ``x < beta``, else ``gamma x + gamma / b - alpha beta``, with
    ``b = e^(gamma / alpha) - 1``. Its slope in ``x`` is
    ``alpha ln(b x / beta + 1) + alpha (1 - beta) / (b x + beta)`` inside
    the zone (``alpha ln(b x + 1)`` for ``beta = 1``), ``gamma`` outside.

    Args:
        pred (Tensor): prediction, e.g. (N, 4).
        target (Tensor): target shaped like ``pred``.
        weight (Tensor, optional): element-wise weight, broadcast.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean.
        beta (float): the zone's width (> 0).
        alpha (float): the inlier gradient scale (> 0).
        gamma (float): the outlier gradient (> 0).
        fast (bool): analytic backward (the slope computed in forward).

    Returns:
        Tensor: the loss, in ``pred``'s dtype.
    """
    b = _balanced_l1_b('BalancedL1Loss', alpha, gamma, beta)

    def plain_value(diff):
        x = diff.abs()
        return torch.where(
            x < beta,
            alpha / b * (b * x + 1) * torch.log(b * x / beta + 1) - alpha * x,
            gamma * x + gamma / b - alpha * beta)

    def value_and_slope(diff, weight, reduce):
        x = diff.abs()
        # a NaN takes the inlier branch, whose log makes its slope NaN
        # (as mmdet's autograd does; the outlier slope is a constant)
        outside = x >= beta
        bx = x * b
        log_term = torch.log1p(bx if beta == 1 else bx / beta)
        inlier = (bx + 1).mul_(log_term).mul_(alpha / b).sub_(x, alpha=alpha)
        outlier = x.mul_(gamma).add_(gamma / b - alpha * beta)
        value = torch.where(outside, outlier, inlier)
        # (b x + 1) / (b x + beta) - 1 = (1 - beta) / (b x + beta): no
        # cancellation, and exactly alpha * ln(b x + 1) for beta = 1
        if beta != 1:
            log_term.add_(bx.add_(beta).reciprocal_().mul_(1 - beta))
        slope = log_term.mul_(alpha).masked_fill_(outside, gamma)
        return value, slope.mul_(diff.sign_()), 1.0, False

    return _difference_loss('BalancedL1Loss', pred, target, weight,
                            reduction, avg_factor, fast, value_and_slope,
                            plain_value)


# --------------------------------------------------------------------------
# MSE
# --------------------------------------------------------------------------
def _mse_value_and_slope(diff: Tensor, weight: Optional[Tensor],
                         reduce: bool):
    # the slope 2 d is kept as d with the factor 2 in `scale`
    if reduce:
        if weight is None:
            return torch.dot(diff.reshape(-1), diff.reshape(-1)), diff, \
                2.0, True
        if weight.shape == diff.shape:
            coeff = diff * weight
            return torch.dot(diff.reshape(-1), coeff.reshape(-1)), coeff, \
                2.0, True
    return diff * diff, diff, 2.0, False


def mse_loss(pred: Tensor,
             target: Tensor,
             weight: Optional[Tensor] = None,
             reduction: str = 'mean',
             avg_factor: AvgFactor = None,
             fast: bool = True) -> Tensor:
    """Squared error ``(pred - target)^2``, weighted and reduced.

    Computed in float32 for half inputs (an fp16 error over 256 squares to
    infinity in fp16).

    Args:
        pred (Tensor): prediction, any shape.
        target (Tensor): target shaped like ``pred``.
        weight (Tensor, optional): element-wise weight, broadcast.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean.
        fast (bool): analytic backward (the slope computed in forward).

    Returns:
        Tensor: the loss, in ``pred``'s dtype.
    """
    return _difference_loss('MSELoss', pred, target, weight, reduction,
                            avg_factor, fast, _mse_value_and_slope,
                            lambda diff: diff * diff)


# --------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------
def _reject_kwargs(loss_name: str, kwargs: dict) -> None:
    # MMDetection forwards **kwargs to its loss function, which rejects any
    if kwargs:
        raise TypeError(f'{loss_name}: unexpected keyword arguments '
                        f'{sorted(kwargs)}')


class ElementwiseRegressionLoss(BaseLoss):
    """Shared base of the L1-family modules.

    Subclasses name their pure function in ``loss_function`` and its extra
    arguments in :meth:`loss_kwargs`; this class resolves the reduction and
    calls it.

    Forward args (as MMDetection's):
        pred (Tensor): prediction, e.g. (N, 4).
        target (Tensor): target shaped like ``pred``.
        weight (Tensor, optional): element-wise weight, broadcast.
        avg_factor (float | Tensor, optional): denominator of the mean.
        reduction_override (str, optional): overrides ``reduction``.
    """

    loss_function = None

    def loss_kwargs(self) -> dict:
        return {}

    def forward(self,
                pred: Tensor,
                target: Tensor,
                weight: Optional[Tensor] = None,
                avg_factor: AvgFactor = None,
                reduction_override: Optional[str] = None,
                **kwargs) -> Tensor:
        """The weighted loss times ``loss_weight``."""
        _reject_kwargs(self.loss_name, kwargs)
        reduction = self.resolve_reduction(reduction_override)
        return self.apply_loss_weight(type(self).loss_function(
            pred, target, weight, reduction=reduction, avg_factor=avg_factor,
            **self.loss_kwargs()))


@MODELS.register_module()
class L1Loss(ElementwiseRegressionLoss):
    """L1 loss (MMDetection 3.3's twin); see :func:`l1_loss`.

    Paper: none (the classical absolute error)

    Args:
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): factor applied to the loss.
    """

    loss_function = staticmethod(l1_loss)

    def __init__(self, reduction: str = 'mean', loss_weight: float = 1.0):
        super().__init__(reduction=reduction, loss_weight=loss_weight)


@MODELS.register_module()
class SmoothL1Loss(ElementwiseRegressionLoss):
    """Smooth L1 loss (MMDetection 3.3's twin); see :func:`smooth_l1_loss`.

    Paper: Girshick, "Fast R-CNN", ICCV 2015, https://arxiv.org/abs/1504.08083

    Args:
        beta (float): half width of the quadratic zone, >= 0 (MMDetection
            requires > 0; below 1e-5 the loss is L1, as in fvcore).
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): factor applied to the loss.
    """

    loss_function = staticmethod(smooth_l1_loss)

    def __init__(self,
                 beta: float = 1.0,
                 reduction: str = 'mean',
                 loss_weight: float = 1.0):
        super().__init__(reduction=reduction, loss_weight=loss_weight)
        self.beta = _check_smooth_l1_beta(self.loss_name, beta)

    def loss_kwargs(self) -> dict:
        return dict(beta=self.beta)

    def extra_repr(self) -> str:
        return f'beta={self.beta}, ' + super().extra_repr()


@MODELS.register_module()
class BalancedL1Loss(ElementwiseRegressionLoss):
    """Balanced L1 loss (MMDetection 3.3's twin); see
    :func:`balanced_l1_loss`.

    Paper: Pang et al., "Libra R-CNN: Towards Balanced Learning for Object Detection", CVPR 2019, https://arxiv.org/abs/1904.02701

    Args:
        alpha (float): inlier gradient scale (> 0).
        gamma (float): outlier gradient (> 0).
        beta (float): width of the inlier zone (> 0).
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): factor applied to the loss.
    """

    loss_function = staticmethod(balanced_l1_loss)

    def __init__(self,
                 alpha: float = 0.5,
                 gamma: float = 1.5,
                 beta: float = 1.0,
                 reduction: str = 'mean',
                 loss_weight: float = 1.0):
        super().__init__(reduction=reduction, loss_weight=loss_weight)
        _balanced_l1_b(self.loss_name, alpha, gamma, beta)
        self.alpha, self.gamma, self.beta = alpha, gamma, beta

    def loss_kwargs(self) -> dict:
        return dict(beta=self.beta, alpha=self.alpha, gamma=self.gamma)

    def extra_repr(self) -> str:
        return (f'alpha={self.alpha}, gamma={self.gamma}, beta={self.beta}, '
                + super().extra_repr())


@MODELS.register_module()
class MSELoss(ElementwiseRegressionLoss):
    """Squared-error loss (MMDetection 3.3's twin); see :func:`mse_loss`.

    Paper: none (the classical squared error)

    Args:
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): factor applied to the loss.
    """

    loss_function = staticmethod(mse_loss)

    def __init__(self, reduction: str = 'mean', loss_weight: float = 1.0):
        super().__init__(reduction=reduction, loss_weight=loss_weight)
