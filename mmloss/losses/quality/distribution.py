"""Distribution focal loss (Li et al., "Generalized Focal Loss", NeurIPS
2020): the public function, the plain per-row formula and the kernel of its
fast path.
"""
import functools
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ...checks import check_tensor, check_weight_shape
from ...engine import dispatch
from ...engine.functions import gradient_in_forward
from ...errors import LossTypeError, LossValueError
from ...precision import compute_dtype, restore_loss, to_dtype
from ...reduction import Reduction
from ..cross_entropy import accurate_neg_log
from .common import _check_float_pred, _weighted_rule

__all__ = ['distribution_focal_loss']


def distribution_focal_loss(pred: Tensor,
                            label: Tensor,
                            weight: Optional[Tensor] = None,
                            reduction: str = 'mean',
                            avg_factor: Optional[Union[float, Tensor]] = None
                            ) -> Tensor:
    """Distribution focal loss (Li et al. 2020), weighted and reduced.

    ``-((l + 1 - y) log S_l + (y - l) log S_(l+1))`` with ``l = floor(y)``
    and ``S`` the softmax of a row. A target at the last bin (``y = n``)
    gives ``-log S_n`` (mmdet indexes past the end there).

    Args:
        pred (Tensor): logits of the distribution (N, n + 1).
        label (Tensor): targets (N,) in ``[0, n]``.
        weight (Tensor, optional): per-row weight (N,).
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean.

    Returns:
        Tensor: (N,) for ``'none'`` in ``pred``'s dtype, else a scalar
            in float32 at least (:func:`mmloss.precision.restore_loss`).
    """
    return _distribution_focal_loss('distribution_focal_loss', pred, label,
                                    weight, reduction, avg_factor)


def _check_distances(loss_name: str, label: Tensor, last: int) -> None:
    """Raise unless every distance lies in ``[0, last]``: read on the host
    where that costs nothing, queued on the device elsewhere (as
    :func:`mmloss.checks.check_label_range`)."""
    if label.numel() == 0:
        return
    low, high = torch.aminmax(label.detach())
    if dispatch.tuning(label).cpu_kernels:
        # two reads on the host, no further ops (NaN fails both tests)
        low, high = low.item(), high.item()
        if not (low >= 0 and high <= last):
            raise LossValueError(
                f'{loss_name}: target must lie in [0, {last}] '
                f'for pred with {last + 1} bins, but got values '
                f'in [{float(low)}, {float(high)}]')
    else:
        torch._assert_async((low >= 0) & (high <= last),
                            f'{loss_name}: target out of [0, {last}]')


def _distribution_focal_loss(loss_name, pred, label, weight, reduction,
                             avg_factor):
    Reduction(loss_name, None, reduction, avg_factor).checked()
    _check_float_pred(loss_name, pred)
    check_tensor(loss_name, 'target', label)
    if pred.dim() != 2 or label.shape != (pred.shape[0], ):
        raise LossValueError(
            f'{loss_name}: pred must have shape (N, n + 1) and '
            f'target shape (N,), but got pred '
            f'{tuple(pred.shape)} and target '
            f'{tuple(label.shape)}')
    if label.dtype == torch.bool or label.dtype.is_complex:
        raise LossTypeError(
            f'{loss_name}: target must hold real distances, but '
            f'has dtype {label.dtype}')
    _check_distances(loss_name, label, pred.shape[1] - 1)
    check_weight_shape(loss_name, weight, label.shape)
    with dispatch.autocast_off(pred):
        _, weight, rule = _weighted_rule(loss_name, pred, weight, reduction,
                                         avg_factor)
        if label.requires_grad or not dispatch.use_fast(
                'DistributionFocalLoss', pred, rows=pred.shape[0]):
            loss = distribution_focal_rows(pred, label)
        else:
            loss = gradient_in_forward(distribution_focal_kernel,
                                       _distribution_focal_plain, pred,
                                       label)
        return restore_loss(rule.apply(loss), pred, rule.reduces)


@functools.lru_cache(maxsize=None)
def _pair_constants(device: torch.device, dtype: torch.dtype):
    """``(steps, offset, slope)`` on ``device``: the column steps ``[0, 1]``
    from a distance's left bin, and ``[-1, 0]``, ``[1, -1]`` that make
    ``offset + slope * (y - l)`` the negated bin weights ``[-(l + 1 - y),
    -(y - l)]`` in one op (exactly: ``1 - (y - l)`` is ``l + 1 - y`` to
    the last bit, both differences being exact)."""
    return (torch.tensor([0, 1], device=device),
            torch.tensor([-1.0, 0.0], device=device, dtype=dtype),
            torch.tensor([1.0, -1.0], device=device, dtype=dtype))


def _bin_pairs(label: Tensor, num_bins: int, dtype: torch.dtype):
    """``(columns, negated_weights)``, (N, 2) each: the left and right bin
    ``l``, ``min(l + 1, n)`` of every distance ``y`` and minus their
    weights ``l + 1 - y``, ``y - l`` (differentiable in ``label``)."""
    steps, offset, slope = _pair_constants(label.device, dtype)
    label = to_dtype(label, dtype)
    left = label.long()
    columns = (left.unsqueeze(1) + steps).clamp_(max=num_bins - 1)
    return columns, torch.addcmul(offset, (label - left).unsqueeze(1), slope)


def distribution_focal_rows(pred: Tensor, label: Tensor) -> Tensor:
    """The plain per-row DFL (N,) by ``log_softmax`` (autograd, any order;
    differentiable in ``label`` too, as mmdet's), float32 at least.

    Both bins of a row come from one gather of an (N, 2) column pair, so
    the graph has one sparse backward and few nodes (the RoI-head sizes,
    about a thousand rows, are bound by per-op overhead)."""
    dtype = compute_dtype(pred)
    columns, negated_weights = _bin_pairs(label, pred.shape[1], dtype)
    log_prob = F.log_softmax(to_dtype(pred, dtype), dim=1)
    # the row sum of two products is their plain sum, bit for bit
    return (log_prob.gather(1, columns) * negated_weights).sum(1)


def distribution_focal_kernel(needs, pred: Tensor, label: Tensor):
    """Per-row DFL (N,) with its gradient, the engine kernel
    (:class:`~mmloss.engine.functions.GradientInForward`).

    With ``S = softmax(x)`` and the two bins ``l``, ``l + 1`` weighted
    ``w_l = l + 1 - y``, ``w_r = y - l``, the gradient is ``S - w_l e_l -
    w_r e_(l+1)``: one softmax (whose two picked entries give the loss, from
    the logits where they underflowed; see :func:`mmloss.losses.
    cross_entropy_kernels.accurate_neg_log`) and two sparse updates. ``label``
    gets no gradient (the caller takes the plain formula when it needs
    one).
    """
    dtype = compute_dtype(pred)
    columns, negated_weights = _bin_pairs(label, pred.shape[1], dtype)
    logits = to_dtype(pred, dtype)
    prob = torch.softmax(logits, dim=1)
    rows_only = dispatch.cpu_kernels(pred)
    loss = None
    for k in range(2):
        column = columns[:, k:k + 1]
        # -log S at the bin (from the logits where S underflowed), times
        # minus the bin's weight
        term = accurate_neg_log(prob.gather(1, column).squeeze(1), logits,
                                column, rows_only).mul_(negated_weights[:, k])
        loss = term if loss is None else loss.add_(term)
    loss.neg_()
    grad = None
    if needs[0]:
        grad = prob
        # at the last bin left == right: scatter_add_ adds both weights
        grad.scatter_add_(1, columns, negated_weights)
    return loss, (grad, None), None


def _distribution_focal_plain(pred: Tensor, label: Tensor) -> Tensor:
    """The value of :func:`distribution_focal_kernel` by autograd ops."""
    with dispatch.autocast_off(pred):
        return distribution_focal_rows(pred, label)
