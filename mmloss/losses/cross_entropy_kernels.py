"""The softmax cross-entropy kernels: the value from one pass of row
statistics (log-sum-exp), the gradient from them in backward, the plain
formula they are held to, and the numerics shared with DFL and KD
(:func:`accurate_neg_log`, :func:`sums_in_range`).
"""
import functools
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..engine import dispatch
from ..engine.functions import gradient_in_backward
from ..precision import compute_dtype, to_dtype
from ..reduction import Reduction
from .focal_kernels import row_blocks

# PyTorch's (and MMDetection's) default label to ignore.
DEFAULT_IGNORE_INDEX = -100


# -log p is exact to float32 rounding above this; below it p has lost bits
_SMALLEST_ACCURATE_PROB = 1e-30


def accurate_neg_log(picked: Tensor, logits: Tensor, column: Tensor,
                     rows_only: bool) -> Tensor:
    """``-log(picked)``, recomputed as ``logsumexp - logit`` where
    ``picked`` (a softmax entry) is too small to be accurate.

    Args:
        picked (Tensor): (N,) softmax entries, ``softmax(logits)`` at
            ``column``.
        logits (Tensor): (N, C).
        column (Tensor): (N, 1) column of each picked entry.
        rows_only (bool): recompute only the rows that need it (reads a flag
            on the host: where :func:`mmloss.engine.dispatch.cpu_kernels`
            allows), else compute every row's ``logsumexp`` and select (no
            host sync).
    """
    loss = torch.log(picked).neg_()
    tiny = picked < _SMALLEST_ACCURATE_PROB
    if rows_only:
        if bool(tiny.any()):
            rows = tiny.nonzero().squeeze(1)
            sub = logits[rows]
            loss[rows] = torch.logsumexp(sub, dim=1) - \
                sub.gather(1, column[rows]).squeeze(1)
        return loss
    exact = torch.logsumexp(logits, dim=1) - \
        logits.gather(1, column).squeeze(1)
    return torch.where(tiny, exact, loss)


#: Row sums ``sum_j exp(x_ij)`` inside this range: every softmax entry
#: ``exp(x_ij) / sum`` that is not negligible (below about ``1e-26`` of its
#: row) is a normal float, so the logits need no shift by their row
#: maximum (which costs a pass over the logits); the row sum's reciprocal
#: (at least ``2**-64``) times a row weight stays a normal float too.
UNSHIFTED_ROW_SUMS = (2.0 ** -40, 2.0 ** 64)


def narrow_labels(label: Tensor, num_classes: int,
                  ignore_index: int) -> Tensor:
    """``label`` in the narrowest integer dtype that holds every class
    index below ``num_classes`` and ``ignore_index`` (``label`` itself if
    none is narrower).

    What the softmax fast path keeps for backward: a copy of 1, 2 or 4
    bytes per row instead of a reference that keeps the caller's 8-byte
    labels alive until backward.
    """
    for dtype in (torch.int8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if label.dtype.itemsize <= info.bits // 8:
            break
        if num_classes - 1 <= info.max and \
                info.min <= ignore_index <= info.max:
            return label.to(dtype)
    return label


def _label_columns(label: Tensor, ignore_index: int, num_classes: int):
    """``(valid, column)``: (N,) whether each label counts, and (N, 1)
    int64 columns (an ignored row points at column 0)."""
    label = label.long()
    valid = label != ignore_index
    return valid, torch.where(valid, label, 0).unsqueeze(1).clamp_(
        max=num_classes - 1)


def sums_in_range(*sums: Tensor) -> bool:
    """Whether every row sum of unshifted exponentials in ``sums`` lies in
    :data:`UNSHIFTED_ROW_SUMS` (``NaN`` does not): one reduction and host
    reads, so only where :func:`mmloss.engine.dispatch.cpu_kernels`
    allows."""
    values = torch.cat(sums) if len(sums) > 1 else sums[0]
    if values.numel() == 0:
        return True
    least, most = torch.aminmax(values)
    low, high = UNSHIFTED_ROW_SUMS
    return low <= least.item() and most.item() <= high


def _exp_row_sums(work: Tensor, shift: Optional[Tensor]) -> Tensor:
    """``sum_j exp(x_ij - shift_i)`` (no shift for ``None``), (N,), block by
    block: the exponentials never fill an (N, C) tensor."""
    spans = row_blocks(work)
    total = work.new_empty(work.size(0))
    scratch = work.new_empty((spans[0][1] - spans[0][0], work.size(1)))
    for start, stop in spans:
        part = scratch[:stop - start]
        if shift is None:
            torch.exp(work[start:stop], out=part)
        else:
            torch.sub(work[start:stop], shift[start:stop, None],
                      out=part).exp_()
        torch.sum(part, 1, out=total[start:stop])
    return total


def softmax_statistics(work: Tensor, unshifted: bool
                       ) -> Tuple[Tensor, Optional[Tensor]]:
    """``(total, shift)`` of each row: ``softmax(x_i) = exp(x_i - shift_i)
    / total_i`` and ``logsumexp(x_i) = shift_i + log(total_i)``.

    ``shift`` is ``None`` (no shift: a pass fewer) where ``unshifted``
    (the caller's :func:`mmloss.engine.dispatch.cpu_kernels`: the check
    reads on the host) and every row's sum of ``exp(x_ij)`` passes
    :func:`sums_in_range`; else it is each row's maximum.
    """
    if unshifted:
        total = _exp_row_sums(work, None)
        if sums_in_range(total):
            return total, None
    shift = work.amax(1)
    return _exp_row_sums(work, shift), shift


def softmax_cross_entropy_value(logits: Tensor, label: Tensor,
                                factor: Optional[Tensor], *,
                                ignore_index: int, reduce_sum: bool):
    """Weighted row losses ``f_i (logsumexp(x_i) - x_il_i)`` (or their sum)
    and the row statistics their gradient needs, the value kernel of
    :class:`~mmloss.engine.functions.GradientInBackward`.

    ``logits`` (N, C) with C >= 1, ``label`` (N,) in ``[0, C)`` or
    ``ignore_index`` (a row of value 0) in any integer dtype, ``factor``
    (N,) the row factor or None for 1. The row statistics of
    :func:`softmax_statistics` give ``logsumexp``; without a shift the
    difference ``log(total_i) - x_il`` is taken in float64, so that a small
    loss of a confident row keeps its digits.

    Returns:
        ``(value, (total, shift))``: the (N,) weighted row losses or their
        sum, float32 at least.
    """
    dtype = compute_dtype(logits)
    work = to_dtype(logits, dtype)
    valid, column = _label_columns(label, ignore_index, work.size(1))
    picked = work.gather(1, column).squeeze(1)
    total, shift = softmax_statistics(work, dispatch.cpu_kernels(logits))
    if shift is None:
        wide = torch.promote_types(dtype, torch.float64)
        loss = (torch.log(total.to(wide)) - picked.to(wide)).to(dtype)
    else:
        loss = (shift - picked).add_(total.log())
    if factor is not None:
        loss = loss * factor
    # select, so that an ignored row's value (even inf) never gives NaN
    loss = torch.where(valid, loss, 0.0)
    return (loss.sum() if reduce_sum else loss), (total, shift)


def softmax_cross_entropy_grad(needs, extras, in_place: bool,
                               logits: Tensor, label: Tensor,
                               factor: Optional[Tensor], *,
                               ignore_index: int, reduce_sum: bool):
    """The gradient kernel of :func:`softmax_cross_entropy_value`.

    ``d loss_i / d x_i = f_i (softmax(x_i) - onehot(l_i))``, written as
    ``exp(x_i - shift_i) - total_i onehot(l_i)`` (one exponential per
    logit into a fresh tensor, and ``scatter_add_`` at the N label entries)
    with the per-row ``scale`` ``f_i / total_i`` (0 for an ignored row),
    which the engine folds into its one pass over the gradient.
    """
    if not needs[0]:
        return (None, None, None), None
    total, shift = extras
    dtype = compute_dtype(logits)
    work = to_dtype(logits, dtype)
    valid, column = _label_columns(label, ignore_index, work.size(1))
    # a fresh upcast copy is the gradient's buffer; the caller's logits
    # never are
    grad = torch.empty_like(work) if work is logits else work
    minus_total = total.neg().unsqueeze(1)
    for start, stop in row_blocks(work):
        part = grad[start:stop]
        if shift is None:
            torch.exp(work[start:stop], out=part)
        else:
            torch.sub(work[start:stop], shift[start:stop, None],
                      out=part).exp_()
        # - total at the label: the block is still in cache
        part.scatter_add_(1, column[start:stop], minus_total[start:stop])
    row_factor = total.reciprocal()
    if factor is not None:
        row_factor = row_factor.mul_(factor)
    return (grad, None, None), torch.where(valid, row_factor, 0.0)


def _softmax_cross_entropy_plain(logits: Tensor, label: Tensor,
                                 factor: Optional[Tensor], *,
                                 ignore_index: int,
                                 reduce_sum: bool) -> Tensor:
    """The value of :func:`softmax_cross_entropy_value` by autograd ops."""
    with dispatch.autocast_off(logits):
        loss = F.cross_entropy(to_dtype(logits, compute_dtype(logits)),
                               label.long(), reduction='none',
                               ignore_index=ignore_index)
        if factor is not None:
            loss = loss * factor
        return loss.sum() if reduce_sum else loss


def softmax_cross_entropy_rows(pred: Tensor, label: Tensor, rule: Reduction,
                               class_weight: Optional[Tensor] = None,
                               ignore_index: int = DEFAULT_IGNORE_INDEX
                               ) -> Tensor:
    """The fast path of 2-D softmax cross-entropy, weighted and reduced by
    ``rule``: the kernels with the weighted sum fused in where
    :meth:`~mmloss.reduction.Reduction.fusable`, else their (N,) row losses
    handed to :meth:`~mmloss.reduction.Reduction.apply`. Float32 at least.

    Backward keeps the logits (a reference), the labels narrowed by
    :func:`narrow_labels`, the row factors (if any) and each row's sum of
    exponentials (and its maximum where the sum needs a shift:
    :func:`softmax_statistics`).
    """
    dtype = compute_dtype(pred)
    factor = None
    if class_weight is not None:
        factor = class_weight[torch.where(label != ignore_index, label, 0)]

    def run(reduce_sum: bool, weight: Optional[Tensor]) -> Tensor:
        row_factor = factor
        if weight is not None:
            weight = weight.expand(label.shape)
            row_factor = weight if factor is None else weight * factor
        options = dict(ignore_index=int(ignore_index), reduce_sum=reduce_sum)
        return gradient_in_backward(
            functools.partial(softmax_cross_entropy_value, **options),
            functools.partial(softmax_cross_entropy_grad, **options),
            functools.partial(_softmax_cross_entropy_plain, **options), pred,
            narrow_labels(label, pred.size(1), int(ignore_index)),
            row_factor)

    return rule.run_kernel(run, dtype, pred.device, label.numel())
