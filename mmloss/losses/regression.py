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

Shapes: ``pred`` and ``target`` of any one shape (``(N, 4)`` box deltas in
a detector), ``weight`` broadcast to it; the loss is element-wise for
``'none'`` and a scalar otherwise. Each is multiplied by ``weight`` and
reduced by MMDetection's rules (:class:`~mmloss.reduction.Reduction`):
``'mean'`` divides by the number of elements, or by ``avg_factor + eps``
when given.

Two executions of the same maths, chosen per call by
:mod:`mmloss.engine.dispatch`: the *plain* formula (ordinary autograd ops
on ``pred`` and ``target``), and a *kernel*. The kernel takes the
difference ``d = pred - target`` by autograd (a subtraction keeps nothing
for backward) and runs the loss of ``d`` through
:class:`~mmloss.engine.functions.GradientInBackward`: forward computes the
weighted, reduced value from ``d``; backward computes the slope
``d loss / d d`` from ``d``, writing over ``d`` when the graph is freed (a
tensor only the graph holds), times ``weight`` and the reduction's factor;
the subtraction's own backward hands it to ``pred`` and its negative to
``target``. So the graph keeps the one tensor ``d``, of ``pred``'s shape
in the compute dtype. A ``weight`` or ``avg_factor`` that requires grad
takes the plain formula (the kernel does not differentiate them), and so
does a backward with ``create_graph=True`` (through the engine: the plain
formula of ``d``), so second derivatives are exact.

Numerics: half inputs are computed in float32; the element-wise loss is
returned in the input dtype, a reduced one in float32
(:func:`mmloss.precision.restore_loss`), so the square of an fp16 error
over 256 (which overflows in MMDetection) stays finite once reduced.
Autocast is switched off inside, so a loss computed under
``torch.autocast`` equals the float32 one.

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
import functools
import math
from numbers import Real
from typing import Callable, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import (check_float, check_positive, check_pred_target,
                      check_same_shape, check_weight_shape)
from ..engine import dispatch
from ..engine.functions import gradient_in_backward
from ..errors import LossTypeError, LossValueError, LossZeroDivisionError
from ..precision import compute_dtype, loss_dtype
from ..reduction import Reduction
from ..registry import MODELS
from ..typing_utils import AvgFactor, OptStr, OptTensor
from .base import BaseLoss, gradient_scale

__all__ = [
    'l1_loss', 'smooth_l1_loss', 'balanced_l1_loss', 'mse_loss', 'L1Loss',
    'SmoothL1Loss', 'BalancedL1Loss', 'MSELoss'
]

# fvcore's threshold below which smooth L1 is plain L1
SMOOTH_L1_MIN_BETA = 1e-5

# dtypes computed as they are (half inputs compute in float32)
_WIDE = (torch.float32, torch.float64)


class _Formula(NamedTuple):
    """One loss of ``d = pred - target``, both ways.

    Attributes:
        value: the kernel's forward, ``value(d, weight, fused) -> Tensor``,
            which never writes over ``d`` (the graph keeps it): with
            ``fused`` (the reduction is fusable, see
            :meth:`~mmloss.reduction.Reduction.fusable`; ``weight`` is then
            ``None`` or shaped like ``d``) ``sum(loss * weight)``, a
            scalar, else the element-wise unweighted loss, ``d``'s shape.
        slope: the kernel's backward, ``slope(d, weight, in_place) ->
            (grad, scale)``: ``d loss / d d`` times ``weight`` (broadcast
            to ``d``), up to the number ``scale``; ``d``'s shape. With
            ``in_place`` it may write over ``d`` and return it; without,
            it leaves ``d`` intact, and may return ``d`` itself (read
            only) when the slope is ``d`` up to ``scale``.
        elementwise: the plain formula, ``(pred, target) -> loss``
            element-wise by autograd ops.
        reduced: where torch has the loss, ``(pred, target, reduction)``
            by torch's own reductions (one operation; used where
            :meth:`~mmloss.reduction.Reduction.torch_reduction` allows).
    """
    value: Callable[[Tensor, Optional[Tensor], bool], Tensor]
    slope: Callable[[Tensor, Optional[Tensor], bool],
                    Tuple[Tensor, float]]
    elementwise: Callable[[Tensor, Tensor], Tensor]
    reduced: Optional[Callable[[Tensor, Tensor, str], Tensor]] = None


# --------------------------------------------------------------------------
# The shared machinery
# --------------------------------------------------------------------------
def _check_inputs(reduce: Reduction, pred: Tensor, target: Tensor) -> None:
    """Shapes and dtypes only (no values: no host sync), each condition
    tested inline (this runs on every call)."""
    name = reduce.loss_name
    check_pred_target(name, pred, target)
    if not pred.is_floating_point():
        check_float(name, 'pred', pred)
    if pred.shape != target.shape:
        check_same_shape(name, pred, target)
    if reduce.weight is not None:
        check_weight_shape(name, reduce.weight, pred.shape)
    reduce.checked()


def _difference_loss(reduce: Reduction, pred: Tensor, target: Tensor,
                     fast: Optional[bool], formula: _Formula) -> Tensor:
    """A loss of ``d = pred - target`` by its kernel or its plain formula.

    ``fast=None`` asks the dispatcher (rows: ``pred``'s first dimension),
    ``False`` forces the plain formula, ``True`` skips the size thresholds.
    A weight or avg_factor that requires grad always takes the plain
    formula (the kernel does not differentiate them).
    """
    _check_inputs(reduce, pred, target)
    dtype = pred.dtype
    if dtype not in _WIDE:
        dtype = compute_dtype(pred)
    out_dtype = loss_dtype(pred, reduce.reduces)
    reduce = reduce.cast(dtype)
    if fast is False or reduce.needs_grad:
        use_kernel = False
    elif fast is None:
        # unweighted: torch's own loss reduces it (the mean of nothing
        # too: the plain formula makes it 0, as the kernel does)
        use_kernel = dispatch.use_fast(
            reduce.loss_name, pred, target,
            rows=pred.shape[0] if pred.dim() else 1,
            unweighted=reduce.weight is None and reduce.avg_factor is None)
    else:
        use_kernel = dispatch.fast_paths_enabled()

    if not use_kernel:
        out = _plain(reduce, formula, dtype, pred, target)
    else:
        out = dispatch.without_autocast(pred, _difference_kernel, reduce,
                                        formula, dtype, pred, target)
    return out if out.dtype == out_dtype else out.to(out_dtype)


def _difference_kernel(reduce: Reduction, formula: _Formula,
                       dtype: torch.dtype, pred: Tensor,
                       target: Tensor) -> Tensor:
    """The kernel of ``formula`` on ``d = pred - target`` (autocast off),
    weighted and reduced."""

    def value_kernel(diff: Tensor):
        fused = reduce.fusable(diff)
        value = formula.value(diff, reduce.weight, fused)
        return reduce.kernel_value(value, diff.numel(), fused), ()

    def grad_kernel(needs, extras, in_place: bool, diff: Tensor):
        grad, scale = formula.slope(diff, reduce.weight, in_place)
        return (grad, ), gradient_scale(reduce, diff.numel(), scale,
                                        diff.dtype)

    def plain(diff: Tensor) -> Tensor:
        # the plain formula of (d, 0), for a backward with create_graph
        return _plain(reduce, formula, dtype, diff,
                      diff.new_zeros(()).expand_as(diff))

    # a fresh tensor (the subtraction's result) that only the graph will
    # hold, which the gradient kernel may overwrite; casts and the
    # subtraction keep nothing for backward
    diff = (pred if pred.dtype == dtype else pred.to(dtype)) - (
        target if target.dtype == dtype else target.to(dtype))
    return gradient_in_backward(value_kernel, grad_kernel, plain, diff)


def _plain(reduce: Reduction, formula: _Formula, dtype: torch.dtype,
           pred: Tensor, target: Tensor) -> Tensor:
    """The plain formula, weighted and reduced, in ``dtype``."""
    return dispatch.without_autocast(pred, _plain_body, reduce, formula,
                                     dtype, pred, target)


def _plain_body(reduce: Reduction, formula: _Formula, dtype: torch.dtype,
                pred: Tensor, target: Tensor) -> Tensor:
    if pred.dtype != dtype:
        pred = pred.to(dtype)
    if target.dtype != dtype:
        target = target.to(dtype)
    if formula.reduced is not None:
        how = reduce.torch_reduction(pred.numel())
        if how is not None:
            return formula.reduced(pred, target, how)
    return reduce.apply(formula.elementwise(pred, target))


def _weighted_sum(loss: Tensor, weight: Optional[Tensor]) -> Tensor:
    """``sum(loss * weight)`` of a weight shaped like ``loss`` (fused),
    the product written over ``loss`` (a temporary of the kernel's).

    torch's pairwise sum, not one ``torch.dot``: BLAS sums in float32 one
    term after another, which drifts (1e-6 relative over a million nearly
    equal terms; MMDetection's sum does not).
    :func:`~mmloss.engine.dispatch.sum_of_products` keeps each dot short.
    """
    if weight is None:
        return loss.sum()
    return loss.mul_(weight).sum()


def _times_weight(slope: Tensor, weight: Optional[Tensor],
                  writable: bool) -> Tensor:
    """``slope * weight``, over ``slope`` when it is ``writable``."""
    if weight is None:
        return slope
    return slope.mul_(weight) if writable else slope * weight


# --------------------------------------------------------------------------
# L1
# --------------------------------------------------------------------------
def _l1_value(diff: Tensor, weight: Optional[Tensor], fused: bool) -> Tensor:
    loss = diff.abs()
    return _weighted_sum(loss, weight) if fused else loss


def _l1_slope(diff: Tensor, weight: Optional[Tensor], in_place: bool):
    # sign(d): 0 at d = 0, as autograd's abs gives
    sign = diff.sign_() if in_place else diff.sign()
    return _times_weight(sign, weight, True), 1.0


def _l1_elementwise(pred: Tensor, target: Tensor) -> Tensor:
    return torch.abs(pred - target)


_L1 = _Formula(_l1_value, _l1_slope, _l1_elementwise)


def l1_loss(pred: Tensor, target: Tensor, weight: OptTensor = None,
            reduction: str = 'mean', avg_factor: AvgFactor = None,
            fast: Optional[bool] = None) -> Tensor:
    """L1 loss ``|pred - target|``, weighted and reduced.

    Its slope is ``sign(pred - target)``.

    Args:
        pred (Tensor): prediction, any shape (e.g. (N, 4) deltas).
        target (Tensor): target shaped like ``pred``.
        weight (Tensor, optional): element-wise weight, broadcast to
            ``pred``.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean.
        fast (bool, optional): ``None`` lets the dispatcher choose the
            path, ``False`` forces the plain formula, ``True`` the kernel
            at any size (unless :func:`mmloss.fast_paths` forbids it).

    Returns:
        Tensor: the loss, in ``pred``'s dtype.
    """
    return _difference_loss(
        Reduction('L1Loss', weight, reduction, avg_factor), pred, target,
        fast, _L1)


# --------------------------------------------------------------------------
# Smooth L1
# --------------------------------------------------------------------------
def _check_smooth_l1_beta(loss_name: str, beta) -> float:
    return float(check_positive(loss_name, 'beta', beta, allow_zero=True))


@functools.lru_cache(maxsize=64)
def _smooth_l1(beta: float) -> _Formula:
    """Smooth L1 of half width ``beta`` (L1 below ``1e-5``)."""
    if beta < SMOOTH_L1_MIN_BETA:
        return _L1

    def reduced(pred, target, reduction):
        # torch's own smooth L1 is this formula in one operation
        return F.smooth_l1_loss(pred, target, reduction=reduction, beta=beta)

    def value(diff, weight, fused):
        # torch's element-wise smooth L1 of (d, 0): one pass, one buffer
        loss = reduced(diff, diff.new_zeros(()).expand_as(diff), 'none')
        return _weighted_sum(loss, weight) if fused else loss

    def slope(diff, weight, in_place):
        # clamp(d, -beta, beta) / beta, the 1 / beta left in the scale
        clamped = diff.clamp_(-beta, beta) if in_place else \
            diff.clamp(-beta, beta)
        return _times_weight(clamped, weight, True), 1.0 / beta

    return _Formula(value, slope, functools.partial(reduced,
                                                    reduction='none'),
                    reduced)


def smooth_l1_loss(pred: Tensor, target: Tensor, weight: OptTensor = None,
                   reduction: str = 'mean', avg_factor: AvgFactor = None,
                   beta: float = 1.0, fast: Optional[bool] = None) -> Tensor:
    """Smooth L1 loss of ``x = |pred - target|``, weighted and reduced.

    ``0.5 * x^2 / beta`` for ``x < beta``, else ``x - 0.5 * beta``; its
    slope is ``clamp(d / beta, -1, 1)``. ``beta < 1e-5`` gives L1.

    ``pred``, ``target``, ``weight``, ``reduction``, ``avg_factor`` and
    ``fast`` are those of :func:`l1_loss`; ``beta`` (float, >= 0) is the
    quadratic zone's half width. Returns the loss in ``pred``'s dtype.
    """
    name = 'SmoothL1Loss'
    return _difference_loss(
        Reduction(name, weight, reduction, avg_factor), pred, target, fast,
        _smooth_l1(_check_smooth_l1_beta(name, beta)))


# --------------------------------------------------------------------------
# Balanced L1
# --------------------------------------------------------------------------
def _balanced_l1_b(loss_name: str, alpha, gamma, beta) -> float:
    """Validate the parameters; return ``b = e^(gamma / alpha) - 1``."""
    for argument, value in (('alpha', alpha), ('gamma', gamma)):
        if isinstance(value, Real) and value == 0:
            # MMDetection divides by both (ZeroDivisionError)
            raise LossZeroDivisionError(
                f'{loss_name}: {argument} must be a number > 0, but got '
                f'{value!r} (b = e^(gamma / alpha) - 1 divides by both)')
    for argument, value in (('alpha', alpha), ('gamma', gamma),
                            ('beta', beta)):
        check_positive(loss_name, argument, value)
    try:
        b = math.exp(gamma / alpha) - 1
    except OverflowError:
        b = math.inf
    if not math.isfinite(b):
        raise LossValueError(
            f'{loss_name}: gamma / alpha = {gamma / alpha} is '
            f'too large (e^(gamma / alpha) overflows)')
    return b


@functools.lru_cache(maxsize=64)
def _balanced_l1(alpha: float, gamma: float, beta: float) -> _Formula:
    """Balanced L1 of checked parameters."""
    b = math.exp(gamma / alpha) - 1

    def elementwise(pred, target):
        x = torch.abs(pred - target)
        return torch.where(
            x < beta,
            alpha / b * (b * x + 1) * torch.log(b * x / beta + 1) - alpha * x,
            gamma * x + gamma / b - alpha * beta)

    def value(diff, weight, fused):
        x = diff.abs()
        # a NaN takes the inlier branch (NaN either way)
        outside = x >= beta
        bx = x * b
        log_term = torch.log1p(bx if beta == 1 else bx / beta)
        inlier = bx.add_(1).mul_(log_term).mul_(alpha / b).sub_(x,
                                                                alpha=alpha)
        outlier = x.mul_(gamma).add_(gamma / b - alpha * beta)
        # into the spent log buffer: no new one
        loss = torch.where(outside, outlier, inlier, out=log_term)
        return _weighted_sum(loss, weight) if fused else loss

    def slope(diff, weight, in_place):
        # d loss / d x: alpha ln(b x / beta + 1) + alpha (1 - beta) /
        # (b x + beta) inside (no cancellation), gamma outside; times
        # sign(d). A NaN takes the inlier branch, whose log makes its
        # slope NaN (as autograd of the plain formula does; the outlier
        # slope is a constant).
        x = diff.abs()
        if beta == 1:
            # alpha ln(b x + 1) grows through gamma exactly at x = 1 (as
            # b + 1 = e^(gamma / alpha)): capping it at gamma gives the
            # outlier's constant; and it is 0 at d = 0, so the sign can be
            # copied from d (diff is only read)
            slope = x.mul_(b).log1p_().mul_(alpha).clamp_(max=gamma)
            return _times_weight(slope.copysign_(diff), weight, True), 1.0
        outside = x >= beta
        bx = x.mul_(b)
        correction = (bx + beta).reciprocal_().mul_(1 - beta)
        slope = bx.div_(beta).log1p_().add_(correction)
        slope = slope.mul_(alpha).masked_fill_(outside, gamma)
        sign = diff.sign_() if in_place else diff.sign()
        return _times_weight(sign.mul_(slope), weight, True), 1.0

    return _Formula(value, slope, elementwise)


def balanced_l1_loss(pred: Tensor, target: Tensor, weight: OptTensor = None,
                     reduction: str = 'mean', avg_factor: AvgFactor = None,
                     beta: float = 1.0, alpha: float = 0.5, gamma: float = 1.5,
                     fast: Optional[bool] = None) -> Tensor:
    """Balanced L1 loss (Libra R-CNN) of ``x = |pred - target|``.

    ``alpha / b * (b x + 1) * ln(b x / beta + 1) - alpha x`` for
    ``x < beta``, else ``gamma x + gamma / b - alpha beta``, with
    ``b = e^(gamma / alpha) - 1``. Its slope in ``x`` is
    ``alpha ln(b x / beta + 1) + alpha (1 - beta) / (b x + beta)`` inside
    the zone (``alpha ln(b x + 1)`` for ``beta = 1``), ``gamma`` outside.

    ``pred``, ``target``, ``weight``, ``reduction``, ``avg_factor`` and
    ``fast`` are those of :func:`l1_loss`; ``beta`` (> 0) is the zone's
    width, ``alpha`` (> 0) the inlier gradient scale and ``gamma`` (> 0)
    the outlier gradient. Returns the loss in ``pred``'s dtype.
    """
    name = 'BalancedL1Loss'
    _balanced_l1_b(name, alpha, gamma, beta)
    return _difference_loss(
        Reduction(name, weight, reduction, avg_factor), pred, target, fast,
        _balanced_l1(alpha, gamma, beta))


# --------------------------------------------------------------------------
# MSE
# --------------------------------------------------------------------------
def _mse_value(diff: Tensor, weight: Optional[Tensor], fused: bool) -> Tensor:
    if fused and weight is None:
        # no buffer of the squares where the table allows
        return dispatch.sum_of_products(diff, diff)
    squares = diff * diff
    return _weighted_sum(squares, weight) if fused else squares


def _mse_slope(diff: Tensor, weight: Optional[Tensor], in_place: bool):
    # the slope 2 d is d (times the weight) with the 2 in the scale
    return _times_weight(diff, weight, in_place), 2.0


def _mse_reduced(pred: Tensor, target: Tensor, reduction: str) -> Tensor:
    return F.mse_loss(pred, target, reduction=reduction)


_MSE = _Formula(_mse_value, _mse_slope,
                functools.partial(_mse_reduced, reduction='none'),
                _mse_reduced)


def mse_loss(pred: Tensor, target: Tensor, weight: OptTensor = None,
             reduction: str = 'mean', avg_factor: AvgFactor = None,
             fast: Optional[bool] = None) -> Tensor:
    """Squared error ``(pred - target)^2``, weighted and reduced.

    Its slope is ``2 (pred - target)``. Computed in float32 for half inputs
    (an fp16 error over 256 squares to infinity in fp16).

    The arguments are those of :func:`l1_loss`. Returns the loss in
    ``pred``'s dtype.
    """
    return _difference_loss(
        Reduction('MSELoss', weight, reduction, avg_factor), pred, target,
        fast, _MSE)


# --------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------
def _reject_kwargs(loss_name: str, kwargs: dict) -> None:
    # MMDetection forwards **kwargs to its loss function, which rejects any
    if kwargs:
        raise LossTypeError(f'{loss_name}: unexpected keyword arguments '
                            f'{sorted(kwargs)}')


class ElementwiseRegressionLoss(BaseLoss):
    """Shared base of the L1-family modules.

    Subclasses return their formula from :meth:`formula`, which checks
    their parameters at the call, where MMDetection checks them; this
    class resolves the reduction and runs it, with the same input checks
    and dispatch as the pure functions.

    Forward args (as MMDetection's):
        pred (Tensor): prediction, e.g. (N, 4).
        target (Tensor): target shaped like ``pred``.
        weight (Tensor, optional): element-wise weight, broadcast.
        avg_factor (float | Tensor, optional): denominator of the mean.
        reduction_override (str, optional): overrides ``reduction``.
    """

    def formula(self) -> _Formula:
        raise NotImplementedError

    def forward(self, pred: Tensor, target: Tensor, weight: OptTensor = None,
                avg_factor: AvgFactor = None,
                reduction_override: OptStr = None, **kwargs) -> Tensor:
        """The weighted loss times ``loss_weight``."""
        if kwargs:
            _reject_kwargs(self.loss_name, kwargs)
        reduction = self.reduction if reduction_override is None else \
            self.resolve_reduction(reduction_override)
        loss = _difference_loss(
            Reduction(self.loss_name, weight, reduction, avg_factor), pred,
            target, None, self.formula())
        return loss if self.loss_weight == 1.0 else self.loss_weight * loss


@MODELS.register_module()
class L1Loss(ElementwiseRegressionLoss):
    """L1 loss (MMDetection 3.3's twin); see :func:`l1_loss`.

    Paper: none (the classical absolute error)

    Args:
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): factor applied to the loss.
    """

    def formula(self) -> _Formula:
        return _L1


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

    def __init__(self, beta: float = 1.0, reduction: str = 'mean',
                 loss_weight: float = 1.0):
        super().__init__(reduction=reduction, loss_weight=loss_weight)
        # checked at the call, where MMDetection asserts beta > 0
        self.beta = float(beta) if isinstance(beta, Real) and not \
            isinstance(beta, bool) else beta

    def formula(self) -> _Formula:
        return _smooth_l1(_check_smooth_l1_beta(self.loss_name, self.beta))

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

    def __init__(self, alpha: float = 0.5, gamma: float = 1.5,
                 beta: float = 1.0, reduction: str = 'mean',
                 loss_weight: float = 1.0):
        super().__init__(reduction=reduction, loss_weight=loss_weight)
        # checked at the call, where MMDetection fails on them
        self.alpha, self.gamma, self.beta = alpha, gamma, beta

    def formula(self) -> _Formula:
        _balanced_l1_b(self.loss_name, self.alpha, self.gamma, self.beta)
        return _balanced_l1(self.alpha, self.gamma, self.beta)

    def extra_repr(self) -> str:
        return (f'alpha={self.alpha}, gamma={self.gamma}, beta={self.beta}, '
                + super().extra_repr())


@MODELS.register_module()
class MSELoss(ElementwiseRegressionLoss):
    """Squared-error loss (MMDetection 3.3's twin); see :func:`mse_loss`.
    Arguments as :class:`L1Loss`.

    Paper: none (the classical squared error)
    """

    def formula(self) -> _Formula:
        return _MSE
