"""GHM-C and GHM-R: the public functions, their plain formulas and their
kernels (the value and ``d loss / d pred`` in one pass), and the choice of
path between the two (:mod:`mmloss.engine.dispatch`).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ...checks import (check_float, check_integer_labels, check_label_range,
                       check_positive, check_reduction, check_same_shape,
                       check_tensor)
from ...engine import dispatch
from ...engine.functions import NegativeOf, gradient_in_forward
from ...errors import LossValueError
from ...precision import compute_dtype, restore_loss, to_dtype
from ...reduction import Reduction
from ..base import reduce_in_kernel
from .histogram import (GHMC_TOP_EDGE_PAD, GHMR_TOP_EDGE, _bin_weights_of,
                        _check_statistics)

__all__ = ['ghmc_loss', 'ghmr_loss']


# --------------------------------------------------------------------------
# Shared by GHM-C and GHM-R
# --------------------------------------------------------------------------
def _rule(loss_name: str, weight: Tensor, reduction: str,
          tot: Tensor) -> Reduction:
    """``'mean'`` divides by ``tot`` (MMDetection's ``avg_factor=tot``);
    ``'sum'`` and ``'none'`` take the weighted losses as they are."""
    return Reduction(loss_name, weight, reduction,
                     tot if reduction == 'mean' else None)


def _weighted_value(rule: Reduction, loss: Tensor, weight: Tensor):
    """``rule`` applied to ``w * L`` in the kernel: ``(value, scale)``.

    ``loss`` is the kernel's own temporary and is overwritten by ``w * L``
    when the sum is fused."""
    fused = rule.fusable(loss)
    if fused:
        # a pairwise sum, not torch.dot: BLAS sums in float32 in order,
        # and at initialisation (every logit near the prior, all w * L
        # alike) that drifts by 3e-4 relative over 368k elements
        loss = loss.mul_(weight).sum()
    return reduce_in_kernel(rule, loss, weight.numel(), fused, 1.0)


def _check_tensor_inputs(name: str, pred: Tensor, target: Tensor,
                         label_weight: Tensor, reduction: str) -> None:
    """The checks GHM-C and GHM-R run first: three tensors, a float
    ``pred`` and a known reduction."""
    check_tensor(name, 'pred', pred)
    check_tensor(name, 'target', target)
    check_tensor(name, 'label_weight', label_weight)
    check_float(name, 'pred', pred)
    check_reduction(name, reduction)


def _check_elementwise(name: str, pred: Tensor, target: Tensor,
                       label_weight: Tensor) -> None:
    """``target`` and ``label_weight`` shaped like ``pred``."""
    check_same_shape(name, pred, target)
    check_same_shape(name, pred, label_weight, ('pred', 'label_weight'))


def _takes_fast_path(loss_name: str, fast: Optional[bool], pred: Tensor,
                     target: Tensor) -> bool:
    """``fast=None`` asks the dispatcher, ``False`` forces the plain
    formula, ``True`` skips its size thresholds."""
    if fast is False:
        return False
    if fast is None:
        return dispatch.use_fast(loss_name, pred, target,
                                 rows=pred.shape[0] if pred.dim() else 1)
    return dispatch.fast_paths_enabled()


def _by_path(loss_name: str, fast: Optional[bool], pred: Tensor,
             target: Tensor, plain, kernel, inputs: tuple, reduction: str,
             plain_only: bool = False) -> Tensor:
    """``plain(*inputs)``, or the kernel (with ``plain`` for a double
    backward) through :func:`~mmloss.engine.functions.gradient_in_forward`
    where the fast path is taken (never with ``plain_only``). The loss of
    ``'none'`` in ``pred``'s dtype, a reduced one in the compute dtype
    (float32 for half inputs: a sum that float32 holds is never ``inf``).
    """
    if plain_only or not _takes_fast_path(loss_name, fast, pred, target):
        out = plain(*inputs)
    else:
        with dispatch.autocast_off(pred):
            out = gradient_in_forward(kernel, plain, *inputs)
    return restore_loss(out, pred, reduction != 'none')


def _nan_where_not_finite(g: Tensor, x: Tensor) -> Tensor:
    """``g`` made NaN, in place, wherever ``x`` is NaN or +-Inf (``0 * x``
    is NaN exactly there and ``+-0`` elsewhere, so a finite ``g`` is left
    bit for bit): an infinite logit has a finite ``|sigmoid(x) - t|``, but
    it must not be counted as a regular gradient norm (see
    :func:`~.histogram._bin_weights`)."""
    return g.add_(x, alpha=0.0)


# --------------------------------------------------------------------------
# GHM-C
# --------------------------------------------------------------------------
def _check_ghmc_inputs(pred: Tensor, target: Tensor, label_weight: Tensor,
                       reduction: str) -> bool:
    """Validate GHM-C's inputs; return True for integer labels."""
    name = 'GHMC'
    _check_tensor_inputs(name, pred, target, label_weight, reduction)
    if target.dim() == pred.dim():
        _check_elementwise(name, pred, target, label_weight)
        return False
    if pred.dim() != 2 or target.dim() != 1:
        raise LossValueError(
            f'{name}: with integer labels pred must have shape '
            f'(N, C) and target shape (N,), but got '
            f'{tuple(pred.shape)} and {tuple(target.shape)}')
    check_integer_labels(name, target)
    if target.shape[0] != pred.shape[0]:
        raise LossValueError(f'{name}: pred has shape {tuple(pred.shape)} but '
                             f'target has shape {tuple(target.shape)}')
    check_same_shape(name, target, label_weight, ('target', 'label_weight'))
    # int64: a uint8 label compared with a class count above 255 wraps
    check_label_range(name, to_dtype(target, torch.int64), pred.shape[1],
                      high_inclusive=True, argument='target')
    return True


def _ghmc_label_kernel(x: Tensor, labels: Tensor, label_weight: Tensor,
                       bins: int, momentum: float,
                       acc_sum: Optional[Tensor], reduction: str,
                       statistics: dict, grad: bool):
    """GHM-C of integer labels without an N x C one-hot.

    With ``s = sigmoid(x)``, the target is 1 only in the label's column of
    a foreground row, so ``g = s`` except there (``1 - s``), the BCE is
    ``softplus(x)`` except there (``softplus(-x)``) and
    ``d BCE / d x = s`` except there (``s - 1 = -g``): the N x C tensors are
    built for the negatives and one column per row is patched.
    """
    num_classes = x.shape[1]
    foreground = labels < num_classes
    # flat index of each row's label cell (column 0 for background rows,
    # which are then left as they are); a flat index_select is much faster
    # than gather along dim 1
    cell = torch.arange(labels.shape[0], device=labels.device) * num_classes
    cell += torch.where(foreground, labels, 0).long()

    def patch(tensor: Tensor, foreground_value) -> None:
        """Write ``foreground_value(old)`` into the foreground label cells."""
        flat = tensor.view(-1)
        old = flat.index_select(0, cell)
        flat.index_copy_(0, cell,
                         torch.where(foreground, foreground_value(old), old))

    g = torch.sigmoid(x)
    patch(g, lambda s: 1 - s)
    _nan_where_not_finite(g, x)
    valid_row = label_weight > 0
    tot = (valid_row.sum() * num_classes).clamp_(min=1).float()
    weight = _bin_weights_of(g, valid_row[:, None], bins,
                             1.0 + GHMC_TOP_EDGE_PAD, statistics, tot,
                             momentum, acc_sum)
    x_cell = x.reshape(-1).index_select(0, cell)
    bce = F.softplus(x)
    patch(bce, lambda _: F.softplus(-x_cell))
    value, scale = _weighted_value(_rule('GHMC', weight, reduction, tot),
                                   bce, weight)
    if not grad:
        return value, (None, ), scale
    coeff = g.mul_(weight)
    patch(coeff, torch.neg)
    return value, (coeff, ), scale


def _ghmc_target_kernel(x: Tensor, target: Tensor, label_weight: Tensor,
                        bins: int, momentum: float,
                        acc_sum: Optional[Tensor], reduction: str,
                        statistics: dict, grad: bool):
    """GHM-C of a (possibly soft) target shaped like the logits."""
    t = to_dtype(target, x.dtype)
    residual = _nan_where_not_finite(torch.sigmoid(x).sub_(t), x)
    valid = label_weight > 0
    tot = valid.sum().clamp_(min=1).float()
    weight = _bin_weights_of(residual.abs(), valid, bins,
                             1.0 + GHMC_TOP_EDGE_PAD, statistics, tot,
                             momentum, acc_sum)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction='none')
    value, scale = _weighted_value(_rule('GHMC', weight, reduction, tot),
                                   bce, weight)
    return value, (residual.mul_(weight) if grad else None, ), scale


def _ghmc_plain(pred: Tensor, target: Tensor, label_weight: Tensor,
                with_labels: bool, bins: int, momentum: float,
                acc_sum: Optional[Tensor], reduction: str,
                statistics: dict) -> Tensor:
    """The plain formula: ``w * BCE`` by autograd, ``w`` a constant."""
    with dispatch.autocast_off(pred):
        x = to_dtype(pred, compute_dtype(pred))
        if with_labels:
            t = F.one_hot(target.long(), x.shape[1] + 1)[:, :-1].to(x.dtype)
            valid = (label_weight > 0)[:, None]
        else:
            t = to_dtype(target, x.dtype)
            valid = label_weight > 0
        with torch.no_grad():
            g = _nan_where_not_finite((torch.sigmoid(x) - t).abs_(), x)
            tot = valid.expand_as(g).sum().clamp_(min=1).float()
            weight = _bin_weights_of(g, valid, bins, 1.0 + GHMC_TOP_EDGE_PAD,
                                     statistics, tot, momentum, acc_sum)
        bce = F.binary_cross_entropy_with_logits(x, t, reduction='none')
        return _rule('GHMC', weight, reduction,
                     statistics['tot']).apply(bce)


def _ghmc(pred: Tensor, target: Tensor, label_weight: Tensor,
          with_labels: bool, bins: int, momentum: float,
          acc_sum: Optional[Tensor], reduction: str,
          fast: Optional[bool]) -> Tensor:
    """GHM-C of checked inputs, by the kernel or the plain formula."""
    statistics = {}
    if with_labels:
        # any integer dtype was accepted; the kernels compare and index
        target = to_dtype(target, torch.int64)

    def plain(pred: Tensor) -> Tensor:
        return _ghmc_plain(pred, target, label_weight, with_labels, bins,
                           momentum, acc_sum, reduction, statistics)

    kernel_of = _ghmc_label_kernel if with_labels else _ghmc_target_kernel

    def kernel(needs, pred: Tensor):
        # contiguous: the label cells are addressed by flat row-major index
        x = to_dtype(pred, compute_dtype(pred)).contiguous()
        return kernel_of(x, target, label_weight, bins, momentum, acc_sum,
                         reduction, statistics, needs[0])

    # the kernel gives no gradient to a soft target
    return _by_path('GHMC', fast, pred, target, plain, kernel, (pred, ),
                    reduction, plain_only=target.requires_grad)


def ghmc_loss(pred: Tensor,
              target: Tensor,
              label_weight: Tensor,
              bins: int = 10,
              momentum: float = 0.0,
              acc_sum: Optional[Tensor] = None,
              reduction: str = 'mean',
              fast: Optional[bool] = None) -> Tensor:
    """GHM-C: binary cross-entropy weighted by gradient-norm density.

    ``g = |sigmoid(x) - t|``, the weights ``w`` as in the module docstring,
    and the loss ``sum(w * BCE(x, t)) / tot`` (``'mean'``; ``tot`` is the
    number of valid elements, at least 1), ``sum(w * BCE)`` (``'sum'``) or
    ``w * BCE`` (``'none'``). ``label_weight`` only marks elements valid
    (``> 0``); its values do not scale the loss. The weights are constants
    of the gradient (as in MMDetection), also of second derivatives.

    Args:
        pred (Tensor): logits (N, C), or any shape with a target like it.
        target (Tensor): integer labels (N,) in ``[0, C]`` (``C`` is
            background), or a 0/1 (or soft) target shaped like ``pred``.
        label_weight (Tensor): (N,) with labels, else shaped like ``pred``.
        bins (int): number of gradient-norm bins.
        momentum (float): moving-average factor in ``[0, 1)``.
        acc_sum (Tensor, optional): ``(bins,)`` moving bin counts, updated
            in place; required when ``momentum > 0``.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        fast (bool, optional): ``None`` lets the dispatcher choose the
            path, ``False`` forces the plain formula, ``True`` the kernel
            (the gradient computed in forward) at any size, unless
            :func:`mmloss.fast_paths` forbids it.

    Returns:
        Tensor: the loss: ``'none'`` in ``pred``'s dtype, ``'mean'`` and
        ``'sum'`` in float32 at least (float32 for half ``pred``).
    """
    with_labels = _check_ghmc_inputs(pred, target, label_weight, reduction)
    _check_statistics('GHMC', bins, momentum, acc_sum)
    return _ghmc(pred, target, label_weight, with_labels, bins, momentum,
                 acc_sum, reduction, fast)


# --------------------------------------------------------------------------
# GHM-R
# --------------------------------------------------------------------------
def _check_ghmr_inputs(pred: Tensor, target: Tensor, label_weight: Tensor,
                       reduction: str) -> None:
    name = 'GHMR'
    _check_tensor_inputs(name, pred, target, label_weight, reduction)
    _check_elementwise(name, pred, target, label_weight)


def _ghmr_plain(pred: Tensor, target: Tensor, label_weight: Tensor,
                mu: float, bins: int, momentum: float,
                acc_sum: Optional[Tensor], reduction: str,
                statistics: dict) -> Tensor:
    """The plain formula: ``w * ASL1`` by autograd, ``w`` a constant."""
    with dispatch.autocast_off(pred):
        dtype = compute_dtype(pred)
        diff = to_dtype(pred, dtype) - to_dtype(target, dtype)
        with torch.no_grad():
            # the kernel's g, operation for operation (the same bins)
            g = diff.div(torch.sqrt(diff * diff + mu * mu)).abs_()
            tot = label_weight.float().sum().clamp_(min=1)
            weight = _bin_weights_of(g, label_weight > 0, bins,
                                     GHMR_TOP_EDGE, statistics, tot,
                                     momentum, acc_sum)
        asl1 = torch.sqrt(diff * diff + mu * mu) - mu
        return _rule('GHMR', weight, reduction,
                     statistics['tot']).apply(asl1)


def _ghmr_kernel(pred: Tensor, target: Tensor, label_weight: Tensor,
                 mu: float, bins: int, momentum: float,
                 acc_sum: Optional[Tensor], reduction: str,
                 statistics: dict, needs):
    """GHM-R's value and ``d loss / d pred`` in one pass."""
    dtype = compute_dtype(pred)
    diff = (to_dtype(pred, dtype) - to_dtype(target, dtype)).contiguous()
    # MMDetection's own rounding: sqrt(d * d + float32(mu * mu))
    root = (diff * diff).add_(mu * mu).sqrt_()
    # d ASL1 / d pred, in (-1, 1), written over d (not needed any more)
    slope = diff.div_(root)
    del diff
    tot = label_weight.float().sum().clamp_(min=1)
    weight = _bin_weights_of(slope.abs(), label_weight > 0, bins,
                             GHMR_TOP_EDGE, statistics, tot, momentum,
                             acc_sum)
    value, scale = _weighted_value(_rule('GHMR', weight, reduction, tot),
                                   root.sub_(mu), weight)
    if needs[0]:
        return value, (slope.mul_(weight), NegativeOf(0)), scale
    if needs[1]:
        return value, (None, slope.mul_(weight).neg_()), scale
    return value, (None, None), scale


def _ghmr(pred: Tensor, target: Tensor, label_weight: Tensor, mu: float,
          bins: int, momentum: float, acc_sum: Optional[Tensor],
          reduction: str, fast: Optional[bool]) -> Tensor:
    """GHM-R of checked inputs, by the kernel or the plain formula."""
    statistics = {}

    def plain(pred: Tensor, target: Tensor) -> Tensor:
        return _ghmr_plain(pred, target, label_weight, mu, bins, momentum,
                           acc_sum, reduction, statistics)

    def kernel(needs, pred: Tensor, target: Tensor):
        return _ghmr_kernel(pred, target, label_weight, mu, bins, momentum,
                            acc_sum, reduction, statistics, needs)

    return _by_path('GHMR', fast, pred, target, plain, kernel,
                    (pred, target), reduction)


def ghmr_loss(pred: Tensor,
              target: Tensor,
              label_weight: Tensor,
              mu: float = 0.02,
              bins: int = 10,
              momentum: float = 0.0,
              acc_sum: Optional[Tensor] = None,
              reduction: str = 'mean',
              fast: Optional[bool] = None) -> Tensor:
    """GHM-R: authentic smooth L1 weighted by gradient-norm density.

    With ``d = pred - target``: ``ASL1 = sqrt(d^2 + mu^2) - mu``,
    ``g = |d| / sqrt(d^2 + mu^2)``, the weights ``w`` as in the module
    docstring, and the loss ``sum(w * ASL1) / tot`` (``'mean'``; ``tot`` is
    ``sum(label_weight)``, at least 1), ``sum(w * ASL1)`` (``'sum'``) or
    ``w * ASL1`` (``'none'``). ``label_weight > 0`` marks valid elements.
    The weights are constants of the gradient (as in MMDetection), also of
    second derivatives; ``target`` gets minus ``pred``'s gradient.

    Args:
        pred (Tensor): box regression deltas, e.g. (N, 4).
        target (Tensor): their targets, shaped like ``pred``.
        label_weight (Tensor): shaped like ``pred``; ``> 0`` marks valid.
        mu (float): the ASL1 parameter (> 0).
        bins (int): number of gradient-norm bins.
        momentum (float): moving-average factor in ``[0, 1)``.
        acc_sum (Tensor, optional): ``(bins,)`` moving bin counts, updated
            in place; required when ``momentum > 0``.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        fast (bool, optional): the path, as in :func:`ghmc_loss`.

    Returns:
        Tensor: the loss: ``'none'`` in ``pred``'s dtype, ``'mean'`` and
        ``'sum'`` in float32 at least (float32 for half ``pred``).
    """
    _check_ghmr_inputs(pred, target, label_weight, reduction)
    check_positive('GHMR', 'mu', mu)
    _check_statistics('GHMR', bins, momentum, acc_sum)
    return _ghmr(pred, target, label_weight, mu, bins, momentum, acc_sum,
                 reduction, fast)
