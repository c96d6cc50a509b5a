"""Gradient Harmonizing Mechanism losses: GHM-C and GHM-R.

Li, Liu and Wang, *Gradient Harmonized Single-stage Detector*, AAAI 2019,
https://arxiv.org/abs/1811.05181.

Both losses weight every valid element by the inverse density of its
*gradient norm* ``g``. The unit interval is cut into ``bins`` regions with
MMDetection's edges ``e_i = float32(i / bins)`` (the last edge lifted to
``1 + 1e-6`` for GHM-C and ``1e3`` for GHM-R); with ``c_b`` the number of
valid elements whose ``g`` falls in region ``b``, ``n`` the number of
non-empty regions and ``tot`` the normaliser below::

    w = tot / (n * c_b)                         (momentum = 0)
    A_b <- m * A_b + (1 - m) * c_b   (non-empty b only)
    w = tot / (n * A_b)                         (momentum m > 0)

Invalid elements (``label_weight <= 0``) get ``w = 0``. The weights carry no
gradient. The loss is ``sum(w * L) / tot`` for ``'mean'``, ``sum(w * L)`` for
``'sum'`` and ``w * L`` for ``'none'``, where

* GHM-C: ``L = BCE(x, t)``, ``g = |sigmoid(x) - t|`` and ``tot`` is the
  number of valid elements (at least 1);
* GHM-R: ``L = sqrt(d^2 + mu^2) - mu`` (authentic smooth L1) of
  ``d = pred - target``, ``g = |d| / sqrt(d^2 + mu^2)`` and ``tot`` is the
  sum of ``label_weight`` (at least 1).

The moving averages ``A`` live in the module's ``acc_sum`` buffer (present
when ``momentum > 0``, as in MMDetection, so checkpoints of either library
load into the other and a resumed run continues the same statistics).

Shapes: GHM-C takes logits ``(N, C)`` with integer labels ``(N,)`` and a
``label_weight`` ``(N,)``, or logits, target and ``label_weight`` of one
shape; GHM-R takes ``pred``, ``target`` and ``label_weight`` of one shape
(``(N, 4)`` deltas). The loss is element-wise for ``'none'``, else a
scalar.

MMDetection loops over the bins in Python with a host sync per bin. Here a
bin index is computed for every element in a few vectorised passes (exactly
MMDetection's bin, see :func:`gradient_bin_index`), the counts come from
one ``bincount`` and ``n`` stays a tensor: nothing syncs with the device.
Two executions of the same maths, chosen per call by
:mod:`mmloss.engine.dispatch`: the plain formula (the weights under
``no_grad``, the loss by autograd) and a kernel that computes the value and
``d loss / d pred`` together through
:class:`~mmloss.engine.functions.GradientInForward`, which keeps that one
tensor for backward instead of the target, the weights and the autograd
intermediates. A backward with ``create_graph=True`` differentiates the
plain formula with the same weights (the running state moves once per
call), so second derivatives are exact with the weights held constant.

Deliberate differences from MMDetection 3.3:

* ``reduction='sum'`` returns ``sum(w * L)``; MMDetection raises because it
  always passes its normaliser as ``avg_factor``.
* GHM-C with integer labels: labels must lie in ``[0, num_classes]``
  (``num_classes`` is background); MMDetection silently treats any other
  value as background. The check reads the labels on the CPU and is queued
  with ``torch._assert_async`` on an accelerator (no sync).
* Half-precision inputs are computed in float32 and the loss is returned in
  the input dtype (MMDetection's GHM-C fails on half logits).
* A NaN in ``pred`` makes the loss NaN, as in MMDetection; its element is
  counted in the first bin instead of none (the statistics of that step are
  meaningless either way).
"""
import math
from numbers import Integral
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import (check_float, check_in_range, check_integer_labels,
                      check_label_range, check_positive, check_reduction,
                      check_same_shape, check_tensor, check_weight_shape)
from ..engine import dispatch
from ..engine.functions import NegativeOf, gradient_in_forward
from ..precision import compute_dtype, to_dtype
from ..reduction import Reduction
from ..registry import MODELS
from .base import BaseLoss, reduce_in_kernel

__all__ = [
    'ghm_edges', 'gradient_bin_index', 'harmonized_bin_weights',
    'ghmc_loss', 'ghmr_loss', 'GHMC', 'GHMR'
]

# Top edges of the last bin, as MMDetection sets them.
GHMC_TOP_EDGE_PAD = 1e-6
GHMR_TOP_EDGE = 1e3


# --------------------------------------------------------------------------
# Bins and harmonizing weights
# --------------------------------------------------------------------------
def ghm_edges(bins: int, top: float, device=None) -> Tensor:
    """The ``bins + 1`` float32 edges ``[0, 1/bins, ..., top]``.

    ``e_i = float32(i) / bins`` in float32 exactly as MMDetection builds
    them; the last edge is replaced by ``top``.
    """
    edges = torch.arange(bins + 1, device=device).float() / bins
    edges[-1] = top
    return edges


_UPPER_EDGES: Dict[Tuple[int, float, torch.device], Tensor] = {}


def _upper_edges(bins: int, top: float, device: torch.device) -> Tensor:
    """``[e_1, ..., e_bins, inf]``: the upper edge of every bin, the
    excluded bin's being +inf (never left). Cached per device and never
    written to: it is the same table at every call."""
    key = (bins, top, device)
    upper = _UPPER_EDGES.get(key)
    if upper is None:
        edges = ghm_edges(bins, top, device)
        upper = _UPPER_EDGES[key] = torch.cat(
            [edges[1:], edges.new_full((1, ), math.inf)])
    return upper


def gradient_bin_index(g: Tensor, bins: int, top: float,
                       valid: Optional[Tensor] = None) -> Tensor:
    """The bin of every gradient norm: ``i`` with ``e_i <= g < e_{i+1}``.

    Elements outside every bin (``g >= top``) and elements where ``valid``
    is False get the index ``bins`` (a bin that is never weighted).

    ``floor(g * bins)`` alone is not MMDetection's bin: ``e_i`` is
    ``i / bins`` rounded to float32 and the product rounds too, so for most
    ``bins`` some ``g`` within an ulp of an edge would land one bin off. So
    ``g`` is multiplied by ``s = bins * (1 - 2^-19)``, whose floor is
    provably the true bin or the one below it, and one comparison with the
    upper edge ``e_{k+1}`` (a gather from a ``bins + 1`` table) settles it.
    An invalid element gets ``bins + 1`` added before the floor, which
    sends it to the excluded bin without a separate masking pass. No sort,
    no search, no host sync.

    Any ``g >= bins / s = 1 + 1.9e-6`` is outside every bin. That is exact
    for GHM-C's top edge ``1 + 1e-6``; GHM-R's ``g = |d| / sqrt(d^2 +
    mu^2)`` never exceeds 1, so its top edge ``1e3`` is never reached.

    Args:
        g (Tensor): float gradient norms, any shape, values in ``[0, 1]``.
        bins (int): number of bins (below ``2^18``).
        top (float): the upper edge of the last bin, ``<= 1 + 1.9e-6`` to
            be taken literally (see above).
        valid (Tensor, optional): bool, broadcastable to ``g``.

    Returns:
        Tensor: int32 bin indices in ``[0, bins]``, shaped like ``g``.
    """
    name = 'gradient_bin_index'
    check_tensor(name, 'g', g)
    check_float(name, 'g', g)
    _check_bins(name, bins)
    if valid is not None:
        check_tensor(name, 'valid', valid)
        if valid.dtype != torch.bool:
            raise TypeError(f'{name}: valid must be a bool tensor, but has '
                            f'dtype {valid.dtype}')
        check_weight_shape(name, valid, g.shape, 'valid')
    return _bin_index(g, bins, top, valid)


def _bin_index(g: Tensor, bins: int, top: float,
               valid: Optional[Tensor]) -> Tensor:
    """:func:`gradient_bin_index` of checked inputs."""
    upper = _upper_edges(bins, top, g.device)
    scale = bins * (1.0 - 2.0 ** -19)
    if valid is None:
        scaled = g.mul(scale)
    else:
        offset = torch.where(valid, 0.0, bins + 1.0).to(g.dtype)
        scaled = torch.add(offset, g, alpha=scale)
    # (NaN * s).to(int32) is unspecified, hence the clamp: a NaN lands in a
    # real bin and the loss is NaN anyway
    index = scaled.to(torch.int32).clamp_(0, bins)
    del scaled
    upper = upper.index_select(0, index.reshape(-1)).view_as(g)
    # adding the bool step through an int8 view is ~3x faster than
    # promoting it or comparing straight into int32
    index.add_(torch.ge(g, upper).view(torch.int8))
    return index


def harmonized_bin_weights(index: Tensor, bins: int, tot: Tensor,
                           momentum: float = 0.0,
                           acc_sum: Optional[Tensor] = None) -> Tensor:
    """The weight of each bin: ``tot / (n * c_b)`` or ``tot / (n * A_b)``.

    Counts the elements of every bin, updates the moving average
    ``acc_sum`` *in place* for the non-empty bins when ``momentum > 0``
    (like the running statistics of ``torch.nn.functional.batch_norm``)
    and returns ``bins + 1`` float32 weights, the last (the excluded bin)
    being 0. Empty bins weigh 0, ``n`` (non-empty bins) stays a tensor.
    The arithmetic follows MMDetection's scalar operations step by step, so
    ``acc_sum`` and the weights are bit-identical to its own.

    Args:
        index (Tensor): int32 bin indices from :func:`gradient_bin_index`.
        bins (int): number of bins.
        tot (Tensor): float32 0-dim normaliser (the loss's ``tot``).
        momentum (float): moving-average factor in ``[0, 1)``.
        acc_sum (Tensor, optional): ``(bins,)`` moving averages, required
            when ``momentum > 0``.

    Returns:
        Tensor: ``(bins + 1,)`` float32 bin weights.
    """
    name = 'harmonized_bin_weights'
    check_tensor(name, 'index', index)
    if index.is_floating_point() or index.is_complex() or \
            index.dtype == torch.bool:
        raise TypeError(f'{name}: index must hold integer bin indices, but '
                        f'has dtype {index.dtype}')
    check_tensor(name, 'tot', tot)
    _check_statistics(name, bins, momentum, acc_sum)
    return _bin_weights(index, bins, tot, momentum, acc_sum)


def _bin_weights(index: Tensor, bins: int, tot: Tensor, momentum: float,
                 acc_sum: Optional[Tensor]) -> Tensor:
    """:func:`harmonized_bin_weights` of checked inputs."""
    counts = torch.bincount(index.reshape(-1), minlength=bins + 1)[:bins]
    nonempty = counts > 0
    n = nonempty.sum().clamp_(min=1).float()
    if momentum > 0:
        # m * A (float32) + float32((1 - m) * c), as MMDetection's
        # tensor-times-Python-float update rounds it.
        fresh = acc_sum.float() * momentum + (
            (1.0 - momentum) * counts.double()).float()
        averaged = torch.where(nonempty, fresh, acc_sum.float())
        acc_sum.copy_(averaged)
        # MMDetection's `tot / A` is `A.reciprocal() * tot`
        weight = averaged.reciprocal() * tot
    else:
        weight = (tot.double() / counts.double()).float()
    weight = torch.where(nonempty, weight, 0.0) / n
    return torch.cat([weight, weight.new_zeros(1)])


# --------------------------------------------------------------------------
# Shared by GHM-C and GHM-R
# --------------------------------------------------------------------------
def _rule(loss_name: str, weight: Tensor, reduction: str,
          tot: Tensor) -> Reduction:
    """``'mean'`` divides by ``tot`` (MMDetection's ``avg_factor=tot``);
    ``'sum'`` and ``'none'`` take the weighted losses as they are."""
    return Reduction(loss_name, weight, reduction,
                     tot if reduction == 'mean' else None)


def _bin_weights_of(g: Tensor, valid: Tensor, bins: int, top: float,
                    statistics: dict, tot: Tensor, momentum: float,
                    acc_sum: Optional[Tensor]) -> Tensor:
    """The harmonizing weight of every element (no gradient).

    The first call for a loss evaluation computes the bin weights from the
    counts (updating ``acc_sum``) and keeps them in ``statistics`` with
    ``tot``; a later call for the same evaluation (the plain formula of a
    double backward) reuses them, so the running state moves once.
    """
    index = _bin_index(g, bins, top, valid)
    table = statistics.get('table')
    if table is None:
        table = _bin_weights(index, bins, tot, momentum, acc_sum)
        statistics.update(table=table, tot=tot)
    return table.to(g.dtype).index_select(0, index.reshape(-1)).view_as(g)


def _weighted_value(rule: Reduction, loss: Tensor, weight: Tensor):
    """``rule`` applied to ``w * L`` in the kernel: ``(value, scale)``."""
    fused = rule.fusable(loss)
    if fused:
        loss = torch.dot(loss.reshape(-1), weight.reshape(-1))
    return reduce_in_kernel(rule, loss, weight.numel(), fused, 1.0)


def _check_statistics(loss_name: str, bins, momentum,
                      acc_sum: Optional[Tensor]) -> None:
    _check_bins(loss_name, bins)
    check_in_range(loss_name, 'momentum', momentum, 0.0, 1.0)
    if momentum > 0:
        if acc_sum is None:
            raise ValueError(f'{loss_name}: momentum > 0 needs acc_sum')
        check_tensor(loss_name, 'acc_sum', acc_sum)
        if acc_sum.shape != (bins, ):
            raise ValueError(f'{loss_name}: acc_sum must have shape '
                             f'({bins},), but has shape '
                             f'{tuple(acc_sum.shape)}')


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


# --------------------------------------------------------------------------
# GHM-C
# --------------------------------------------------------------------------
def _check_ghmc_inputs(pred: Tensor, target: Tensor, label_weight: Tensor,
                       reduction: str) -> bool:
    """Validate GHM-C's inputs; return True for integer labels."""
    name = 'GHMC'
    check_tensor(name, 'pred', pred)
    check_tensor(name, 'target', target)
    check_tensor(name, 'label_weight', label_weight)
    check_float(name, 'pred', pred)
    check_reduction(name, reduction)
    if target.dim() == pred.dim():
        check_same_shape(name, pred, target)
        check_same_shape(name, pred, label_weight, ('pred', 'label_weight'))
        return False
    if pred.dim() != 2 or target.dim() != 1:
        raise ValueError(f'{name}: with integer labels pred must have shape '
                         f'(N, C) and target shape (N,), but got '
                         f'{tuple(pred.shape)} and {tuple(target.shape)}')
    check_integer_labels(name, target)
    if target.shape[0] != pred.shape[0]:
        raise ValueError(f'{name}: pred has shape {tuple(pred.shape)} but '
                         f'target has shape {tuple(target.shape)}')
    check_same_shape(name, target, label_weight, ('target', 'label_weight'))
    check_label_range(name, target, pred.shape[1], high_inclusive=True,
                      argument='target')
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
    residual = torch.sigmoid(x).sub_(t)
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
            g = (torch.sigmoid(x) - t).abs()
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

    def plain(pred: Tensor) -> Tensor:
        return _ghmc_plain(pred, target, label_weight, with_labels, bins,
                           momentum, acc_sum, reduction, statistics)

    # the kernel gives no gradient to a soft target
    if target.requires_grad or not _takes_fast_path('GHMC', fast, pred,
                                                    target):
        return to_dtype(plain(pred), pred.dtype)
    kernel_of = _ghmc_label_kernel if with_labels else _ghmc_target_kernel

    def kernel(needs, pred: Tensor):
        # contiguous: the label cells are addressed by flat row-major index
        x = to_dtype(pred, compute_dtype(pred)).contiguous()
        return kernel_of(x, target, label_weight, bins, momentum, acc_sum,
                         reduction, statistics, needs[0])

    with dispatch.autocast_off(pred):
        out = gradient_in_forward(kernel, plain, pred)
    return to_dtype(out, pred.dtype)


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
        Tensor: the loss, in ``pred``'s dtype.
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
    check_tensor(name, 'pred', pred)
    check_tensor(name, 'target', target)
    check_tensor(name, 'label_weight', label_weight)
    check_float(name, 'pred', pred)
    check_reduction(name, reduction)
    check_same_shape(name, pred, target)
    check_same_shape(name, pred, label_weight, ('pred', 'label_weight'))


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

    if not _takes_fast_path('GHMR', fast, pred, target):
        return to_dtype(plain(pred, target), pred.dtype)

    def kernel(needs, pred: Tensor, target: Tensor):
        return _ghmr_kernel(pred, target, label_weight, mu, bins, momentum,
                            acc_sum, reduction, statistics, needs)

    with dispatch.autocast_off(pred):
        out = gradient_in_forward(kernel, plain, pred, target)
    return to_dtype(out, pred.dtype)


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
        Tensor: the loss, in ``pred``'s dtype.
    """
    _check_ghmr_inputs(pred, target, label_weight, reduction)
    check_positive('GHMR', 'mu', mu)
    _check_statistics('GHMR', bins, momentum, acc_sum)
    return _ghmr(pred, target, label_weight, mu, bins, momentum, acc_sum,
                 reduction, fast)


# --------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------
def _check_bins(loss_name: str, bins) -> int:
    if isinstance(bins, bool) or not isinstance(bins, Integral) or bins < 1:
        raise ValueError(f'{loss_name}: bins must be an integer >= 1, but '
                         f'got {bins!r}')
    return int(bins)


class _HarmonizedLoss(BaseLoss):
    """The state shared by GHM-C and GHM-R: edges and moving counts."""

    top_edge: float

    def __init__(self, bins: int, momentum: float, loss_weight: float,
                 reduction: str):
        super().__init__(reduction=reduction, loss_weight=loss_weight)
        self.bins = _check_bins(self.loss_name, bins)
        self.momentum = float(check_in_range(self.loss_name, 'momentum',
                                             momentum, 0.0, 1.0))
        # The same buffers (names, shapes, presence) as MMDetection's, so a
        # checkpoint of either loads strictly into the other. `edges` is
        # informational: the bins are recomputed from `bins`.
        self.register_buffer('edges', ghm_edges(self.bins, self.top_edge))
        if self.momentum > 0:
            self.register_buffer('acc_sum', torch.zeros(self.bins))
        else:
            self.acc_sum = None

    def extra_repr(self) -> str:
        return (f'bins={self.bins}, momentum={self.momentum}, '
                + super().extra_repr())


@MODELS.register_module()
class GHMC(_HarmonizedLoss):
    """GHM-C loss (MMDetection 3.3's twin); see :func:`ghmc_loss`.

    Paper: Li et al., "Gradient Harmonized Single-stage Detector", AAAI 2019, https://arxiv.org/abs/1811.05181

    Args:
        bins (int): number of gradient-norm bins (>= 1).
        momentum (float): moving-average factor of the bin counts, in
            ``[0, 1)``; 0 uses the counts of each call.
        use_sigmoid (bool): must be True (GHM-C is a sigmoid BCE loss).
        loss_weight (float): factor applied to the loss.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
    """

    top_edge = 1.0 + GHMC_TOP_EDGE_PAD

    def __init__(self,
                 bins=10,
                 momentum=0,
                 use_sigmoid=True,
                 loss_weight=1.0,
                 reduction='mean'):
        if use_sigmoid is not True:
            raise ValueError(f'GHMC: only use_sigmoid=True is supported, but '
                             f'got use_sigmoid={use_sigmoid!r}')
        super().__init__(bins, momentum, loss_weight, reduction)
        self.use_sigmoid = True

    def forward(self,
                pred: Tensor,
                target: Tensor,
                label_weight: Tensor,
                reduction_override: Optional[str] = None,
                **kwargs) -> Tensor:
        """GHM-C of logits against labels or a binary target.

        Args:
            pred (Tensor): logits (N, C).
            target (Tensor): labels (N,) in ``[0, C]`` or a target (N, C).
            label_weight (Tensor): (N,) or (N, C); ``> 0`` marks valid.
            reduction_override (str, optional): overrides ``reduction``.
            **kwargs: ignored (heads pass ``avg_factor``; GHM-C normalises
                by its own count of valid elements, as MMDetection's does).

        Returns:
            Tensor: the loss times ``loss_weight``.
        """
        reduction = self.resolve_reduction(reduction_override)
        with_labels = _check_ghmc_inputs(pred, target, label_weight,
                                         reduction)
        return self.apply_loss_weight(_ghmc(
            pred, target, label_weight, with_labels, self.bins,
            self.momentum, self.acc_sum, reduction, None))


@MODELS.register_module()
class GHMR(_HarmonizedLoss):
    """GHM-R loss (MMDetection 3.3's twin); see :func:`ghmr_loss`.

    Paper: Li et al., "Gradient Harmonized Single-stage Detector", AAAI 2019, https://arxiv.org/abs/1811.05181

    Args:
        mu (float): the authentic smooth L1 parameter (> 0).
        bins (int): number of gradient-norm bins (>= 1).
        momentum (float): moving-average factor of the bin counts, in
            ``[0, 1)``; 0 uses the counts of each call.
        loss_weight (float): factor applied to the loss.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
    """

    top_edge = GHMR_TOP_EDGE

    def __init__(self,
                 mu=0.02,
                 bins=10,
                 momentum=0,
                 loss_weight=1.0,
                 reduction='mean'):
        self_name = type(self).__name__
        mu = float(check_positive(self_name, 'mu', mu))
        super().__init__(bins, momentum, loss_weight, reduction)
        self.mu = mu

    def forward(self,
                pred: Tensor,
                target: Tensor,
                label_weight: Tensor,
                avg_factor=None,
                reduction_override: Optional[str] = None) -> Tensor:
        """GHM-R of regression deltas.

        Args:
            pred (Tensor): deltas (N, 4) (or (N, 4 * C)).
            target (Tensor): targets shaped like ``pred``.
            label_weight (Tensor): shaped like ``pred``; ``> 0`` marks
                valid elements.
            avg_factor: ignored, as by MMDetection (GHM-R normalises by
                ``sum(label_weight)``); heads pass it.
            reduction_override (str, optional): overrides ``reduction``.

        Returns:
            Tensor: the loss times ``loss_weight``.
        """
        reduction = self.resolve_reduction(reduction_override)
        _check_ghmr_inputs(pred, target, label_weight, reduction)
        return self.apply_loss_weight(_ghmr(
            pred, target, label_weight, self.mu, self.bins, self.momentum,
            self.acc_sum, reduction, None))

    def extra_repr(self) -> str:
        return f'mu={self.mu}, ' + super().extra_repr()
