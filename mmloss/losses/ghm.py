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

Speed: MMDetection loops over the bins in Python with a host sync per bin.
Here a bin index is computed for every element in a few vectorised passes
(exactly MMDetection's bin, see :func:`gradient_bin_index`), the counts come
from one ``bincount``, ``n`` stays a tensor, and the loss runs through
:class:`~mmloss.gradients.PrecomputedGradientFunction`, which keeps only
``d loss / d pred`` (one float32 tensor) for backward instead of the
target, the weights and the autograd intermediates. Nothing syncs with the device. The plain autograd
formulas stay available with ``fast=False``.

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
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import (check_in_range, check_integer_labels,
                      check_label_range, check_positive, check_same_shape,
                      check_tensor)
from ..gradients import PrecomputedGradientFunction
from ..precision import compute_dtype
from ..reduction import FLOAT32_EPS
from ..registry import MODELS
from .base import BaseLoss

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
    # upper edge of every bin; the excluded bin's is +inf (never left)
    edges = ghm_edges(bins, top, g.device)
    upper = torch.cat([edges[1:], edges.new_full((1, ), math.inf)])
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
    counts = torch.bincount(index.reshape(-1), minlength=bins + 1)[:bins]
    nonempty = counts > 0
    n = nonempty.sum().clamp_(min=1).float()
    if momentum > 0:
        if acc_sum is None:
            raise ValueError('harmonized_bin_weights: momentum > 0 needs '
                             'acc_sum')
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
# The shared reduction
# --------------------------------------------------------------------------
def _reduce(elementwise: Tensor, weight: Tensor, reduction: str,
            denominator: Tensor) -> Tensor:
    """``w * L`` reduced: 'none', 'sum' or the sum over ``denominator``."""
    if reduction == 'none':
        return elementwise.mul_(weight)
    total = torch.dot(elementwise.reshape(-1), weight.reshape(-1))
    return total / denominator if reduction == 'mean' else total


def _mean_denominator(tot: Tensor) -> Tensor:
    # MMDetection divides by the Python float `tot + eps`, rounded to
    # float32 by the division
    return (tot.double() + FLOAT32_EPS).float()


# --------------------------------------------------------------------------
# GHM-C
# --------------------------------------------------------------------------
def _check_ghmc_inputs(pred: Tensor, target: Tensor,
                       label_weight: Tensor) -> bool:
    """Validate GHM-C's inputs; return True for integer labels."""
    name = 'GHMC'
    check_tensor(name, 'pred', pred)
    check_tensor(name, 'target', target)
    check_tensor(name, 'label_weight', label_weight)
    if not pred.dtype.is_floating_point:
        raise TypeError(f'{name}: pred must hold float logits, but has dtype '
                        f'{pred.dtype}')
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


def _ghmc_label_parts(pred: Tensor, labels: Tensor, label_weight: Tensor,
                      bins: int, momentum: float, acc_sum: Optional[Tensor],
                      reduction: str):
    """GHM-C of integer labels without an N x C one-hot.

    With ``s = sigmoid(x)``, the target is 1 only in the label's column of
    a foreground row, so ``g = s`` except there (``1 - s``), the BCE is
    ``softplus(x)`` except there (``softplus(-x)``) and
    ``d BCE / d x = s`` except there (``s - 1 = -g``): the N x C tensors are
    built for the negatives and one column per row is patched.
    """
    num_classes = pred.shape[1]
    # contiguous: the label cells are addressed by flat row-major index
    x = pred.detach().to(compute_dtype(pred)).contiguous()
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
    index = gradient_bin_index(g, bins, 1.0 + GHMC_TOP_EDGE_PAD,
                               valid_row[:, None])
    bin_weight = harmonized_bin_weights(index, bins, tot, momentum, acc_sum)
    weight = bin_weight.to(g.dtype).index_select(0, index.reshape(-1))
    weight = weight.view_as(g)

    x_cell = x.reshape(-1).index_select(0, cell)
    bce = F.softplus(x)
    patch(bce, lambda _: F.softplus(-x_cell))
    denominator = _mean_denominator(tot)
    value = _reduce(bce, weight, reduction, denominator)

    coeff = g.mul_(weight)
    patch(coeff, torch.neg)
    scale = denominator.reciprocal() if reduction == 'mean' else None
    return value, coeff, scale, weight, tot


def _ghmc_onehot_parts(pred: Tensor, target: Tensor, label_weight: Tensor,
                       bins: int, momentum: float,
                       acc_sum: Optional[Tensor], reduction: str):
    """GHM-C of a (possibly soft) target shaped like ``pred``."""
    x = pred.detach().to(compute_dtype(pred)).contiguous()
    t = target.detach().to(x.dtype)
    residual = torch.sigmoid(x).sub_(t)
    g = residual.abs()
    valid = label_weight > 0
    tot = valid.sum().clamp_(min=1).float()
    index = gradient_bin_index(g, bins, 1.0 + GHMC_TOP_EDGE_PAD, valid)
    bin_weight = harmonized_bin_weights(index, bins, tot, momentum, acc_sum)
    weight = bin_weight.to(g.dtype).index_select(0, index.reshape(-1))
    weight = weight.view_as(g)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction='none')
    denominator = _mean_denominator(tot)
    value = _reduce(bce, weight, reduction, denominator)
    coeff = residual.mul_(weight)
    scale = denominator.reciprocal() if reduction == 'mean' else None
    return value, coeff, scale, weight, tot


def ghmc_loss(pred: Tensor,
              target: Tensor,
              label_weight: Tensor,
              bins: int = 10,
              momentum: float = 0.0,
              acc_sum: Optional[Tensor] = None,
              reduction: str = 'mean',
              fast: bool = True) -> Tensor:
    """GHM-C: binary cross-entropy weighted by gradient-norm density.

    ``g = |sigmoid(x) - t|``, the weights ``w`` as in the module docstring,
    and the loss ``sum(w * BCE(x, t)) / tot`` (``'mean'``; ``tot`` is the
    number of valid elements, at least 1), ``sum(w * BCE)`` (``'sum'``) or
    ``w * BCE`` (``'none'``). ``label_weight`` only marks elements valid
    (``> 0``); its values do not scale the loss.

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
        fast (bool): the gradient computed in forward (one saved N x C
            tensor); ``False`` runs the plain autograd formula.

    Returns:
        Tensor: the loss, in ``pred``'s dtype.
    """
    with_labels = _check_ghmc_inputs(pred, target, label_weight)
    parts = _ghmc_label_parts if with_labels else _ghmc_onehot_parts

    if fast and not target.requires_grad:
        out = PrecomputedGradientFunction.apply(
            pred, None, lambda: parts(pred, target, label_weight, bins,
                                      momentum, acc_sum, reduction)[:3])
        return out.to(pred.dtype)

    # the plain formula: the same weights, autograd through the BCE
    with torch.no_grad():
        weight, tot = parts(pred, target, label_weight, bins, momentum,
                            acc_sum, 'sum')[3:]
    if with_labels:
        onehot = F.one_hot(target.long(), pred.shape[1] + 1)[:, :-1]
    else:
        onehot = target
    work = pred.to(compute_dtype(pred))
    bce = F.binary_cross_entropy_with_logits(
        work, onehot.to(work.dtype), reduction='none')
    loss = bce * weight
    if reduction == 'mean':
        loss = loss.sum() / _mean_denominator(tot)
    elif reduction == 'sum':
        loss = loss.sum()
    return loss.to(pred.dtype)


# --------------------------------------------------------------------------
# GHM-R
# --------------------------------------------------------------------------
def _check_ghmr_inputs(pred: Tensor, target: Tensor,
                       label_weight: Tensor) -> None:
    name = 'GHMR'
    check_tensor(name, 'pred', pred)
    check_tensor(name, 'target', target)
    check_tensor(name, 'label_weight', label_weight)
    if not pred.dtype.is_floating_point:
        raise TypeError(f'{name}: pred must be a float tensor, but has dtype '
                        f'{pred.dtype}')
    check_same_shape(name, pred, target)
    check_same_shape(name, pred, label_weight, ('pred', 'label_weight'))


def _ghmr_parts(pred: Tensor, target: Tensor, label_weight: Tensor,
                mu: float, bins: int, momentum: float,
                acc_sum: Optional[Tensor], reduction: str):
    """GHM-R's value, ``d loss / d pred``, weights and ``tot``."""
    dtype = compute_dtype(pred)
    diff = (pred.detach().to(dtype) - target.detach().to(dtype)).contiguous()
    # MMDetection's own rounding: sqrt(d * d + float32(mu * mu))
    root = (diff * diff).add_(mu * mu).sqrt_()
    # d ASL1 / d pred, in (-1, 1), written over d (not needed any more)
    slope = diff.div_(root)
    del diff
    valid = label_weight > 0
    tot = label_weight.float().sum().clamp_(min=1)
    index = gradient_bin_index(slope.abs(), bins, GHMR_TOP_EDGE, valid)
    bin_weight = harmonized_bin_weights(index, bins, tot, momentum, acc_sum)
    weight = bin_weight.to(slope.dtype).index_select(0, index.reshape(-1))
    weight = weight.view_as(slope)
    asl1 = root.sub_(mu)
    denominator = _mean_denominator(tot)
    value = _reduce(asl1, weight, reduction, denominator)
    coeff = slope.mul_(weight)
    scale = denominator.reciprocal() if reduction == 'mean' else None
    return value, coeff, scale, weight, tot


def ghmr_loss(pred: Tensor,
              target: Tensor,
              label_weight: Tensor,
              mu: float = 0.02,
              bins: int = 10,
              momentum: float = 0.0,
              acc_sum: Optional[Tensor] = None,
              reduction: str = 'mean',
              fast: bool = True) -> Tensor:
    """GHM-R: authentic smooth L1 weighted by gradient-norm density.

    With ``d = pred - target``: ``ASL1 = sqrt(d^2 + mu^2) - mu``,
    ``g = |d| / sqrt(d^2 + mu^2)``, the weights ``w`` as in the module
    docstring, and the loss ``sum(w * ASL1) / tot`` (``'mean'``; ``tot`` is
    ``sum(label_weight)``, at least 1), ``sum(w * ASL1)`` (``'sum'``) or
    ``w * ASL1`` (``'none'``). ``label_weight > 0`` marks valid elements.

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
        fast (bool): the gradient computed in forward; ``False`` runs
            the plain autograd formula.

    Returns:
        Tensor: the loss, in ``pred``'s dtype.
    """
    _check_ghmr_inputs(pred, target, label_weight)
    if fast:
        out = PrecomputedGradientFunction.apply(
            pred, target, lambda: _ghmr_parts(
                pred, target, label_weight, mu, bins, momentum, acc_sum,
                reduction)[:3])
        return out.to(pred.dtype)

    with torch.no_grad():
        weight, tot = _ghmr_parts(pred, target, label_weight, mu, bins,
                                  momentum, acc_sum, 'sum')[3:]
    dtype = compute_dtype(pred)
    diff = pred.to(dtype) - target.to(dtype)
    loss = (torch.sqrt(diff * diff + mu * mu) - mu) * weight
    if reduction == 'mean':
        loss = loss.sum() / _mean_denominator(tot)
    elif reduction == 'sum':
        loss = loss.sum()
    return loss.to(pred.dtype)


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
        loss = ghmc_loss(pred, target, label_weight, bins=self.bins,
                         momentum=self.momentum, acc_sum=self.acc_sum,
                         reduction=reduction)
        return loss * self.loss_weight


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
        loss = ghmr_loss(pred, target, label_weight, mu=self.mu,
                         bins=self.bins, momentum=self.momentum,
                         acc_sum=self.acc_sum, reduction=reduction)
        return loss * self.loss_weight

    def extra_repr(self) -> str:
        return f'mu={self.mu}, ' + super().extra_repr()
