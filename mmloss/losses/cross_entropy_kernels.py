"""The cross-entropy kernels: the softmax one (the value and the
exponentials its gradient comes from in one pass, the gradient from them in
backward), the integer-label sigmoid one (no one-hot target), and the
numerics shared with DFL and KD (:func:`accurate_neg_log`,
:func:`sums_in_range`).
"""
import functools
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..engine import dispatch
from ..engine.functions import FromOutput, gradient_from_output
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


def _exponentials(work: Tensor, shift: Optional[Tensor]
                  ) -> Tuple[Tensor, Tensor]:
    """``(exps, total)``: ``exps = exp(x - shift)`` (no shift for ``None``)
    and its row sums ``total`` (N,), block by block (a block is summed while
    it is in cache)."""
    exps = torch.empty_like(work)
    total = work.new_empty(work.size(0))
    for start, stop in row_blocks(work):
        part = exps[start:stop]
        if shift is None:
            torch.exp(work[start:stop], out=part)
        else:
            torch.sub(work[start:stop], shift[start:stop, None],
                      out=part).exp_()
        torch.sum(part, 1, out=total[start:stop])
    return exps, total


def softmax_cross_entropy_kernel(logits: Tensor, label: Tensor,
                                 factor: Optional[Tensor], *,
                                 ignore_index: int, reduce_sum: bool):
    """Weighted row losses ``f_i (logsumexp(x_i) - x_il_i)`` (or their sum)
    and the exponentials their gradient comes from: the kernel of
    :class:`~mmloss.engine.functions.GradientFromOutput`.

    ``logits`` (N, C) with C >= 1, ``label`` (N,) in ``[0, C)`` or
    ``ignore_index`` (a row of value 0) in any integer dtype, ``factor``
    (N,) the row factor or None for 1. One exponential per logit:
    ``exps = exp(x - shift)`` with its row sums ``total``, where the shift
    is each row's maximum, or none at all (a pass fewer) where
    :func:`mmloss.engine.dispatch.cpu_kernels` allows the host read of
    :func:`sums_in_range` and every row passes it. Without a shift the
    difference ``log(total_i) - x_il`` is taken in float64, so that a small
    loss of a confident row keeps its digits.

    Returns:
        ``(value, exps, (total, coded, row_factor))``: the (N,) weighted
        row losses or their sum (float32 at least), the (N, C)
        exponentials, their row sums, each row's label column (-1 for an
        ignored label, narrowed by :func:`narrow_labels`) and its factor
        (None for 1; 0 for an ignored label).
    """
    dtype = compute_dtype(logits)
    work = to_dtype(logits, dtype)
    valid, column = _label_columns(label, ignore_index, work.size(1))
    picked = work.gather(1, column).squeeze(1)
    shift = None
    if dispatch.cpu_kernels(logits):
        exps, total = _exponentials(work, None)
        if not sums_in_range(total):
            shift = work.amax(1)
    else:
        shift = work.amax(1)
    if shift is None:
        wide = torch.promote_types(dtype, torch.float64)
        loss = (torch.log(total.to(wide)) - picked.to(wide)).to(dtype)
    else:
        exps, total = _exponentials(work, shift)
        loss = (shift - picked).add_(total.log())
    row_factor = None
    if factor is not None:
        row_factor = torch.where(valid, to_dtype(factor, dtype), 0.0)
        loss = loss * row_factor
    # select, so that an ignored row's value (even inf) never gives NaN
    loss = torch.where(valid, loss, 0.0)
    # an ignored row's column is -1: no flag of its own to keep
    coded = narrow_labels(torch.where(valid.unsqueeze(1), column, -1),
                          work.size(1), -1)
    return (loss.sum() if reduce_sum else loss), exps, (total, coded,
                                                        row_factor)


def _decode(coded: Tensor, row_factor: Optional[Tensor], dtype):
    """``(column, row_factor)`` of the kept ``coded`` columns: (N, 1)
    int64 (an ignored row at column 0) and (N,) (0 for an ignored row)."""
    coded = coded.long()
    if row_factor is None:
        row_factor = coded.squeeze(1).ge(0).to(dtype)
    return coded.clamp(min=0), row_factor


def _softmax_grad_kernel(exps: Tensor, extras, in_place: bool):
    """``d loss_i / d x_i = f_i (softmax(x_i) - onehot(l_i))``, written as
    ``exps - total_i onehot(l_i)`` (over ``exps`` where ``in_place``) and
    the per-row ``scale`` ``f_i / total_i``, which the engine folds into
    its one pass over the gradient."""
    total, coded, row_factor = extras
    column, row_factor = _decode(coded, row_factor, exps.dtype)
    grad = exps if in_place else exps.clone()
    grad.scatter_add_(1, column, total.neg().unsqueeze(1))
    return grad, row_factor / total


def _softmax_grad_formula(exps: Tensor, extras) -> Tensor:
    """The gradient of :func:`_softmax_grad_kernel` by differentiable ops
    of ``exps`` (a double backward)."""
    _, coded, row_factor = extras
    column, row_factor = _decode(coded, row_factor, exps.dtype)
    onehot = torch.zeros_like(exps).scatter_(1, column, 1.0)
    prob = exps / exps.sum(1, keepdim=True)
    return (prob - onehot) * row_factor.unsqueeze(1)


def _exps_backward(exps: Tensor, extras, grad: Tensor) -> Tensor:
    """``d exps / d x`` applied to ``grad``: ``exps = exp(x - shift)``
    with the shift a constant (every use divides by a row sum of
    ``exps``, in which the shift cancels)."""
    return grad * exps


def softmax_rule(ignore_index: int, reduce_sum: bool) -> FromOutput:
    """The :class:`~mmloss.engine.functions.FromOutput` of the softmax
    cross-entropy kernel with these options."""
    return FromOutput(
        functools.partial(softmax_cross_entropy_kernel,
                          ignore_index=ignore_index, reduce_sum=reduce_sum),
        _softmax_grad_kernel, _softmax_grad_formula, _exps_backward)


def softmax_cross_entropy_rows(pred: Tensor, label: Tensor, rule: Reduction,
                               class_weight: Optional[Tensor] = None,
                               ignore_index: int = DEFAULT_IGNORE_INDEX
                               ) -> Tensor:
    """The fast path of 2-D softmax cross-entropy, weighted and reduced by
    ``rule``: the kernels with the weighted sum fused in where
    :meth:`~mmloss.reduction.Reduction.fusable`, else their (N,) row losses
    handed to :meth:`~mmloss.reduction.Reduction.apply`. Float32 at least.

    Backward keeps the exponentials (as many bytes as the float32 logits,
    which it does not hold: mmdet keeps the log-softmax, the same size),
    each row's label column narrowed by :func:`narrow_labels`, its sum of
    exponentials and its factor
    (:func:`softmax_cross_entropy_kernel`).
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
        return gradient_from_output(
            softmax_rule(int(ignore_index), reduce_sum), pred, label,
            row_factor)

    return rule.run_kernel(run, dtype, pred.device, label.numel())


# --------------------------------------------------------------------------
# Sigmoid cross-entropy against integer labels
# --------------------------------------------------------------------------
def sigmoid_one_hot_rows(logits: Tensor, label: Tensor,
                         pos_weight: Optional[Tensor]) -> Tensor:
    """Row sums (N,) of sigmoid BCE against the one-hot of integer labels,
    without the one-hot target (autograd, any order).

    ``row_i = sum_j softplus(x_ij) + [0 <= l_i < C] * (p_l softplus(-x_il)
    - softplus(x_il))``; labels outside ``[0, C)`` give negatives only.
    """
    num_classes = logits.size(1)
    positive = (label >= 0) & (label < num_classes)
    column = torch.where(positive, label, 0).long()[:, None]
    picked = logits.gather(1, column).squeeze(1)
    pos_term = F.softplus(-picked)
    if pos_weight is not None:
        pos_term = pos_term * pos_weight[column.squeeze(1)]
    return F.softplus(logits).sum(1) + torch.where(
        positive, pos_term - F.softplus(picked), 0.0)


def sigmoid_one_hot_kernel(needs, logits: Tensor, label: Tensor,
                           pos_weight: Optional[Tensor], row_weight: Tensor):
    """``sum_i r_i * row_i`` of :func:`sigmoid_one_hot_rows` and its
    gradient, the engine kernel
    (:class:`~mmloss.engine.functions.GradientInForward`).

    The gradient of ``row_i`` is ``sigmoid(x_i)``, its label column
    replaced by ``p_l (sigmoid(x_il) - 1)``; the row weights ``r`` (N,)
    are the per-row ``scale`` backward folds in. Float32 at least.
    """
    dtype = compute_dtype(logits)
    work = to_dtype(logits, dtype)
    if pos_weight is not None:
        pos_weight = to_dtype(pos_weight, dtype)
    total = (sigmoid_one_hot_rows(work, label, pos_weight) *
             row_weight).sum()
    grad = None
    if needs[0]:
        num_classes = work.size(1)
        positive = ((label >= 0) & (label < num_classes))[:, None]
        column = torch.where(positive, label[:, None], 0).long()
        grad = torch.sigmoid(work)
        picked = grad.gather(1, column)
        pos_grad = picked - 1
        if pos_weight is not None:
            pos_grad = pos_grad * pos_weight[column]
        grad.scatter_(1, column, torch.where(positive, pos_grad, picked))
    return total, (grad, None, None, None), row_weight


def sigmoid_one_hot_plain(logits: Tensor, label: Tensor,
                          pos_weight: Optional[Tensor],
                          row_weight: Tensor) -> Tensor:
    """The value of :func:`sigmoid_one_hot_kernel` by autograd ops."""
    with dispatch.autocast_off(logits):
        dtype = compute_dtype(logits)
        if pos_weight is not None:
            pos_weight = to_dtype(pos_weight, dtype)
        return (sigmoid_one_hot_rows(to_dtype(logits, dtype), label,
                                     pos_weight) * row_weight).sum()
