"""The per-row Jacobian engine of the box losses.

A box loss pairs box ``i`` of ``pred`` with box ``i`` of ``target``, so loss
``L_i`` depends on that pair only and its whole derivative is one row of
four numbers per input: the row's Jacobian ``d L_i / d box_i``. A *core*
computes the loss of a block of rows together with these Jacobians, from the
same intermediates::

    core(pred, target, need_grad, need_target, *args)
        -> (loss, jac_pred, jac_target)

``pred`` and ``target`` are (n, 4) blocks in column-major storage
(:func:`mmloss.geometry.column_major`); ``loss`` is (n,) (or (n, k) for a
per-coordinate loss), each Jacobian is (n, 4) in any storage, or ``None``
when ``need_grad`` (``need_target``) is false. A core is pure tensor maths,
run with autograd off.

This module runs a core over (N, 4) boxes, block by block, through
:class:`mmloss.engine.functions.GradientInForward`:

* :func:`per_row`: the element-wise loss (N,). Forward writes each block's
  Jacobians into row-major (N, 4) buffers and saves only those; backward
  scales each row by its incoming gradient
  (:func:`mmloss.gradients.scale_saved_grad`, in place when the graph is
  freed).
* :func:`weighted_sum`: ``sum_i w_i L_i``, all a ``'mean'`` or ``'sum'``
  reduction needs (:meth:`mmloss.reduction.Reduction.finish` divides).
  Forward folds each block's weighted Jacobian straight into row-major
  (N, 4) gradient buffers and keeps only the block sums; backward is one
  scaling by the incoming scalar. :func:`fused_sum` is the same driver for
  any per-block step (losses whose Jacobian is not a per-row one).

Only the loss and the Jacobians are full size: a core's many per-box
temporaries live one block at a time. Rows per block are data, from the
dispatch table (:func:`mmloss.engine.dispatch.block_rows`); cores with room
for larger blocks ask for ``wide=True``.

Both drivers take the family's *plain* formula as well: the same value by
ordinary autograd ops, run only for a backward with ``create_graph=True``,
so that the gradient and every derivative of it are the plain formula's.
"""
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import geometry as geo
from .dispatch import block_rows
from .functions import GradientInForward, gradient_in_forward

__all__ = ['blocks', 'run_rows', 'per_row', 'weighted_sum', 'fused_sum',
           'row_step']

#: ``core(pred, target, need_grad, need_target, *args) -> (loss, jac_pred,
#: jac_target)`` (see the module docstring).
Core = Callable[..., Tuple[Tensor, Optional[Tensor], Optional[Tensor]]]
#: ``step(pred, target, weight, out_pred, out_target) -> total`` (see
#: :func:`fused_sum`).
Step = Callable[..., Tensor]


def blocks(n: int, rows: int) -> List[Tuple[int, int]]:
    """``(start, stop)`` of equal blocks of at most ``rows`` rows covering
    ``range(n)`` (equal, so no short block at the end pays the per-op
    overheads for few rows); one empty block for ``n = 0``."""
    count = max(1, -(-n // max(1, rows)))
    size = max(1, -(-n // count))
    return [(start, min(start + size, n))
            for start in range(0, max(n, 1), size)]


def _full_like_block(part: Tensor, n: int) -> Tensor:
    """An empty full-size (n, ...) buffer for a block's ``part``; a
    column-major (n, k) part keeps column-major storage."""
    shape = (n, ) + part.shape[1:]
    if part.dim() == 2 and part.stride(0) == 1 and part.shape[1] > 1:
        return part.new_empty(shape[::-1]).t()
    return part.new_empty(shape)


def run_rows(core: Core, pred: Tensor, target: Tensor, need_grad: bool,
             need_target: bool, args: Sequence = (),
             rows: Optional[int] = None
             ) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """``core`` over (N, 4) boxes block by block: the loss and the
    row-major (N, 4) Jacobians (``None`` where not asked for)."""
    n = pred.shape[0]
    spans = blocks(n, block_rows(pred) if rows is None else rows)
    if len(spans) == 1:
        loss, *jacs = core(geo.column_major(pred), geo.column_major(target),
                           need_grad, need_target, *args)
        return (loss, ) + tuple(None if jac is None else geo.row_major(jac)
                                for jac in jacs)
    loss = None
    full = [None, None]
    for start, stop in spans:
        parts = core(geo.column_major(pred[start:stop]),
                     geo.column_major(target[start:stop]), need_grad,
                     need_target, *args)
        if loss is None:
            loss = _full_like_block(parts[0], n)
        loss[start:stop] = parts[0]
        for k, jac in enumerate(parts[1:]):
            if jac is None:
                continue
            if full[k] is None:
                full[k] = jac.new_empty((n, 4))
            geo.row_major(jac, out=full[k][start:stop])
        del parts
    return (loss, full[0], full[1])


def per_row(core: Core, plain: Callable, pred: Tensor, target: Tensor,
            args: Sequence = (), wide: bool = False) -> Tensor:
    """The element-wise loss (N,) of ``core`` with its gradient in forward.

    Args:
        core: see the module docstring.
        plain: ``plain(pred, target, *args)``, the same loss by autograd
            ops (used only for ``create_graph=True``).
        pred, target (Tensor): (N, 4) boxes, float32 or float64.
        args: the core's and the plain formula's extra arguments.
        wide (bool): the core takes the table's wide blocks.

    Returns:
        Tensor: the loss, (N,) (or what the core returns per row).
    """
    rows = block_rows(pred, wide=wide)

    def kernel(needs, p, t):
        loss, jac_p, jac_t = run_rows(core, p, t, any(needs), needs[1],
                                      args, rows)
        return loss, (jac_p, jac_t), None

    def reference(p, t):
        return plain(p, t, *args)

    return gradient_in_forward(kernel, reference, pred, target)


def row_step(core: Core, args: Sequence = ()) -> Step:
    """The :func:`fused_sum` step of a per-row core: the block's
    ``sum(w * loss)`` and its weighted Jacobians, written (and transposed
    to row-major) in the same pass as the weighting."""

    def step(p, t, w, out_p, out_t):
        loss, *jacs = core(p, t, True, out_t is not None, *args)
        total = loss.sum() if w is None else (loss * w).sum()
        for out, jac in zip((out_p, out_t), jacs):
            if out is None or jac is None:
                continue
            if w is None:
                geo.row_major(jac, out=out)
            else:
                torch.mul(jac, w.unsqueeze(-1), out=out)
        return total

    return step


def fused_sum(step: Step, plain: Callable, pred: Tensor, target: Tensor,
              weight: Optional[Tensor], rows: int) -> Tensor:
    """``sum_i w_i L_i`` over (N, 4) boxes, gradient in hand.

    ``step(pred, target, weight, out_pred, out_target)`` gets one block of
    column-major boxes and its weights (``None`` for none), writes the
    gradient of its weighted sum into the row-major (n, 4) views
    ``out_pred`` / ``out_target`` (``None`` where no gradient is wanted)
    and returns that sum. ``plain(pred, target)`` is the same weighted sum
    by autograd ops (for ``create_graph=True``). Only call this when a
    backward will come (the gradient is always computed).
    """

    def kernel(needs, p, t):
        n = p.shape[0]
        outs = [p.new_empty((n, 4)) if needs[0] else None,
                t.new_empty((n, 4)) if needs[1] else None]
        totals = []
        for start, stop in blocks(n, rows):
            w = None if weight is None else weight[start:stop]
            totals.append(step(
                geo.column_major(p[start:stop]),
                geo.column_major(t[start:stop]), w,
                *(None if out is None else out[start:stop] for out in outs)))
        total = totals[0] if len(totals) == 1 else torch.stack(totals).sum()
        return total, tuple(outs), None

    return GradientInForward.apply(kernel, plain, pred, target)


def weighted_sum(core: Core, plain: Callable, pred: Tensor, target: Tensor,
                 weight: Optional[Tensor], args: Sequence = (),
                 wide: bool = False) -> Tensor:
    """``sum_i w_i L_i`` of a per-row ``core`` (:func:`fused_sum` with
    :func:`row_step`); ``plain(pred, target, *args)`` is the element-wise
    loss, weighted and summed here for ``create_graph=True``.

    Args:
        weight (Tensor, optional): (N,) constant weights, ``pred``'s dtype.
    """

    def reference(p, t):
        loss = plain(p, t, *args)
        return loss.sum() if weight is None else (loss * weight).sum()

    return fused_sum(row_step(core, args), reference, pred, target, weight,
                     block_rows(pred, wide=wide))
