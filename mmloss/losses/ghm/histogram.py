"""GHM's gradient-norm histogram: the bin edges, the bin of every gradient
norm, the harmonizing weight of every bin (with the moving counts) and of
every element, and the checks of those arguments.
"""
import math
from numbers import Integral
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ...checks import (check_float, check_in_range, check_tensor,
                       check_weight_shape)
from ...errors import LossTypeError, LossValueError

__all__ = ['ghm_edges', 'gradient_bin_index', 'harmonized_bin_weights']

# Top edges of the last bin, as MMDetection sets them.
GHMC_TOP_EDGE_PAD = 1e-6
GHMR_TOP_EDGE = 1e3


def ghm_edges(bins: int, top: float, device=None) -> Tensor:
    """The ``bins + 1`` float32 edges ``[0, 1/bins, ..., top]``.

    ``e_i = float32(i) / bins`` in float32 exactly as MMDetection builds
    them; the last edge is replaced by ``top``.
    """
    edges = torch.arange(bins + 1, device=device).float() / bins
    edges[-1] = top
    return edges


_UPPER_EDGES: Dict[Tuple[int, float, torch.device], Tensor] = {}

# Internally an element goes to a *slot*: slot 0 holds the non-finite
# gradient norms (a NaN/Inf input), slot ``b + 1`` is bin ``b`` and slot
# ``bins + 1`` the excluded elements (invalid, or outside every bin).


def _upper_edges(bins: int, top: float, device: torch.device) -> Tensor:
    """``[nan, e_1, ..., e_bins, nan]``: the upper edge of every slot's bin
    (``g >= nan`` is never true, so slots 0 and ``bins + 1`` are never
    left). Cached per device and never written to: it is the same table at
    every call."""
    key = (bins, top, device)
    upper = _UPPER_EDGES.get(key)
    if upper is None:
        edges = ghm_edges(bins, top, device)
        nan = edges.new_full((1, ), math.nan)
        upper = _UPPER_EDGES[key] = torch.cat([nan, edges[1:], nan])
    return upper


def gradient_bin_index(g: Tensor, bins: int, top: float,
                       valid: Optional[Tensor] = None) -> Tensor:
    """The bin of every gradient norm: ``i`` with ``e_i <= g < e_{i+1}``.

    Elements outside every bin (``g >= top``), non-finite ones (NaN/Inf)
    and elements where ``valid`` is False get the index ``bins`` (a bin
    that is never weighted).

    ``floor(g * bins)`` alone is not MMDetection's bin: ``e_i`` is
    ``i / bins`` rounded to float32 and the product rounds too, so for most
    ``bins`` some ``g`` within an ulp of an edge would land one bin off. So
    ``g`` is multiplied by ``s = bins * (1 - 2^-19)``, whose floor is
    provably the true bin or the one below it, and one comparison with the
    upper edge ``e_{k+1}`` (a gather from a ``bins + 2`` table) settles it.
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
            raise LossTypeError(
                f'{name}: valid must be a bool tensor, but has '
                f'dtype {valid.dtype}')
        check_weight_shape(name, valid, g.shape, 'valid')
    slot = _bin_slot(g, bins, top, valid)
    # slot 0 (non-finite) is excluded too; slot b + 1 is bin b
    return torch.where(slot == 0, bins, slot - 1).to(torch.int32)


def _bin_slot(g: Tensor, bins: int, top: float,
              valid: Optional[Tensor]) -> Tensor:
    """The int32 slot of every element (see above): 0 for a non-finite
    ``g`` (valid or not), ``b + 1`` for bin ``b``, ``bins + 1`` for the
    excluded elements."""
    upper = _upper_edges(bins, top, g.device)
    scale = bins * (1.0 - 2.0 ** -19)
    if valid is None:
        scaled = g.mul(scale).add_(1.0)
    else:
        offset = torch.where(valid, 1.0, bins + 2.0).to(g.dtype)
        scaled = torch.add(offset, g, alpha=scale)
    # (NaN * s).to(int32) is unspecified: a non-finite norm goes to slot 0
    # explicitly (a finite norm below 0 truncates to it too)
    scaled.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    slot = scaled.to(torch.int32).clamp_(0, bins + 1)
    del scaled
    upper = upper.index_select(0, slot.reshape(-1)).view_as(g)
    # adding the bool step through an int8 view is ~3x faster than
    # promoting it or comparing straight into int32
    slot.add_(torch.ge(g, upper).view(torch.int8))
    return slot


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
        raise LossTypeError(
            f'{name}: index must hold integer bin indices, but '
            f'has dtype {index.dtype}')
    check_tensor(name, 'tot', tot)
    _check_statistics(name, bins, momentum, acc_sum)
    slot = index.long().clamp(0, bins) + 1
    return _bin_weights(slot, bins, tot, momentum, acc_sum)[1:]


def _bin_weights(slot: Tensor, bins: int, tot: Tensor, momentum: float,
                 acc_sum: Optional[Tensor]) -> Tensor:
    """The weight of every slot (``bins + 2``, float32) from the slots of
    :func:`_bin_slot`: NaN for slot 0 (a non-finite input is never given
    a finite weight: its loss stays NaN/Inf), 0 for the excluded slot.

    ``acc_sum`` moves only when no element is non-finite: a step whose
    loss is NaN/Inf (and that the optimizer or the loss scaler will skip)
    leaves the running state as it was, so one bad batch cannot carry
    into the later steps."""
    counts = torch.bincount(slot.reshape(-1), minlength=bins + 2)
    all_finite = counts[0] == 0
    counts = counts[1:bins + 1]
    nonempty = counts > 0
    n = nonempty.sum().clamp_(min=1).float()
    if momentum > 0:
        # m * A (float32) + float32((1 - m) * c), as MMDetection's
        # tensor-times-Python-float update rounds it.
        state = acc_sum.float()
        fresh = state * momentum + (
            (1.0 - momentum) * counts.double()).float()
        averaged = torch.where(nonempty, fresh, state)
        acc_sum.copy_(torch.where(all_finite, averaged, state))
        # MMDetection's `tot / A` is `A.reciprocal() * tot`
        weight = averaged.reciprocal() * tot
    else:
        weight = (tot.double() / counts.double()).float()
    weight = torch.where(nonempty, weight, 0.0) / n
    return torch.cat([weight.new_full((1, ), math.nan), weight,
                      weight.new_zeros(1)])


def _bin_weights_of(g: Tensor, valid: Tensor, bins: int, top: float,
                    statistics: dict, tot: Tensor, momentum: float,
                    acc_sum: Optional[Tensor]) -> Tensor:
    """The harmonizing weight of every element (no gradient).

    The first call for a loss evaluation computes the bin weights from the
    counts (updating ``acc_sum``) and keeps them in ``statistics`` with
    ``tot``; a later call for the same evaluation (the plain formula of a
    double backward) reuses them, so the running state moves once. A
    non-finite ``g`` (the caller makes ``g`` NaN wherever an input is not
    finite) gets a NaN weight and stays out of the counts.
    """
    slot = _bin_slot(g, bins, top, valid)
    table = statistics.get('table')
    if table is None:
        table = _bin_weights(slot, bins, tot, momentum, acc_sum)
        statistics.update(table=table, tot=tot)
    return table.to(g.dtype).index_select(0, slot.reshape(-1)).view_as(g)


def _check_bins(loss_name: str, bins) -> int:
    if isinstance(bins, bool) or not isinstance(bins, Integral) or bins < 1:
        raise LossValueError(f'{loss_name}: bins must be an integer >= 1, but '
                             f'got {bins!r}')
    return int(bins)


def _check_statistics(loss_name: str, bins, momentum,
                      acc_sum: Optional[Tensor]) -> None:
    _check_bins(loss_name, bins)
    check_in_range(loss_name, 'momentum', momentum, 0.0, 1.0)
    if momentum > 0:
        if acc_sum is None:
            raise LossValueError(f'{loss_name}: momentum > 0 needs acc_sum')
        # float: an integer buffer would truncate the moving averages
        check_float(loss_name, 'acc_sum', acc_sum)
        if acc_sum.shape != (bins, ):
            raise LossValueError(f'{loss_name}: acc_sum must have shape '
                                 f'({bins},), but has shape '
                                 f'{tuple(acc_sum.shape)}')
