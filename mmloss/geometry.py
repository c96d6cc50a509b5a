"""Aligned box geometry shared by every box loss.

Boxes are ``(x1, y1, x2, y2)`` in the last dimension, shape ``(..., 4)``;
every function pairs box ``i`` of ``a`` with box ``i`` of ``b`` (aligned, not
all-pairs). Corners are handled as ``(..., 2)`` halves (``lo = (x1, y1)``,
``hi = (x2, y2)``) so x and y travel together through one op.

The losses compose these pieces (CIoU = DIoU + aspect term, DIoU = IoU +
centre-distance term) instead of repeating the arithmetic. Ties in
``torch.maximum``/``torch.minimum`` share the gradient half and half, and
``clamp(min=0)`` passes the gradient at exactly zero: :func:`pair_backward`,
the hand-written backward of the primitives, follows the same rules, so the
fast paths give autograd's gradients also for identical and touching boxes.

Half and bfloat16 boxes overflow in squared terms (a 300 px box has an area
of 90000 > 65504), so :func:`upcast` lifts them to float32; losses cast the
result back with :func:`restore_dtype`.
"""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .precision import restore_dtype, upcast  # noqa: F401 (re-exported)

#: ``4 / pi**2``, the scale of CIoU's aspect-ratio consistency term.
ASPECT_SCALE = 4 / math.pi**2

__all__ = [
    'ASPECT_SCALE', 'upcast', 'restore_dtype', 'corners', 'box_wh',
    'box_area', 'box_centre', 'intersection_wh', 'box_inter_union',
    'aligned_iou', 'enclosing_box', 'enclosing_wh', 'enclosing_area',
    'enclosing_diagonal_sq', 'centre_offset', 'centre_distance_sq',
    'aspect_consistency', 'extended_intersection',
    'scale_boxes', 'nonfinite_rows',
    'column_major', 'row_major', 'pair_backward'
]


def corners(boxes: Tensor) -> Tuple[Tensor, Tensor]:
    """``(lo, hi)``: the ``(x1, y1)`` and ``(x2, y2)`` halves, (..., 2)."""
    return boxes[..., :2], boxes[..., 2:]


def box_wh(boxes: Tensor) -> Tensor:
    """Width and height ``(x2 - x1, y2 - y1)``, shape (..., 2)."""
    lo, hi = corners(boxes)
    return hi - lo


def box_area(boxes: Tensor) -> Tensor:
    """Area ``(x2 - x1) * (y2 - y1)``, shape (...)."""
    wh = box_wh(boxes)
    return wh[..., 0] * wh[..., 1]


def box_centre(boxes: Tensor) -> Tensor:
    """Centre ``((x1 + x2) / 2, (y1 + y2) / 2)``, shape (..., 2)."""
    lo, hi = corners(boxes)
    return (lo + hi) * 0.5


def intersection_wh(a: Tensor, b: Tensor) -> Tensor:
    """Width/height of the overlap, ``max(0, min(hi) - max(lo))``, (..., 2)."""
    return (torch.minimum(a[..., 2:], b[..., 2:]) -
            torch.maximum(a[..., :2], b[..., :2])).clamp(min=0)


def box_inter_union(a: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
    """Intersection and union areas ``I`` and ``U = A_a + A_b - I``, (...)."""
    wh = intersection_wh(a, b)
    inter = wh[..., 0] * wh[..., 1]
    return inter, box_area(a) + box_area(b) - inter


def aligned_iou(a: Tensor, b: Tensor, eps: float = 1e-6,
                floor: bool = False) -> Tensor:
    """IoU ``I / (U + eps)``, or ``I / max(U, eps)`` with ``floor=True``.

    MMDetection uses both forms (``bbox_overlaps`` floors the union, the DIoU
    family adds ``eps``), so both are offered to keep the twins exact.
    """
    inter, union = box_inter_union(a, b)
    union = union.clamp(min=eps) if floor else union + eps
    return inter / union


def enclosing_box(a: Tensor, b: Tensor) -> Tensor:
    """The smallest box holding both, ``(min lo, max hi)``, (..., 4)."""
    return torch.cat([torch.minimum(a[..., :2], b[..., :2]),
                      torch.maximum(a[..., 2:], b[..., 2:])], dim=-1)


def enclosing_wh(a: Tensor, b: Tensor, min_size: float = 0.0) -> Tensor:
    """Width/height of the enclosing box, clamped at ``min_size``, (..., 2)."""
    return (torch.maximum(a[..., 2:], b[..., 2:]) -
            torch.minimum(a[..., :2], b[..., :2])).clamp(min=min_size)


def enclosing_area(a: Tensor, b: Tensor) -> Tensor:
    """Area of the enclosing box, (...)."""
    wh = enclosing_wh(a, b)
    return wh[..., 0] * wh[..., 1]


def enclosing_diagonal_sq(a: Tensor, b: Tensor, eps: float = 0.0) -> Tensor:
    """Squared diagonal ``c**2 = cw**2 + ch**2 + eps`` of the enclosing box."""
    wh = enclosing_wh(a, b)
    return wh[..., 0]**2 + wh[..., 1]**2 + eps


def centre_offset(a: Tensor, b: Tensor) -> Tensor:
    """Twice the centre offset, ``(b_lo + b_hi) - (a_lo + a_hi)``, (..., 2).

    Kept doubled (no rounding from the halving) because the squared distance
    below divides by 4 once.
    """
    return (b[..., :2] + b[..., 2:]) - (a[..., :2] + a[..., 2:])


def centre_distance_sq(a: Tensor, b: Tensor) -> Tensor:
    """Squared distance ``rho**2`` between the box centres, (...)."""
    d = centre_offset(a, b)
    return d[..., 0]**2 / 4 + d[..., 1]**2 / 4


def aspect_consistency(a: Tensor, b: Tensor, eps: float = 0.0) -> Tensor:
    """CIoU's ``v = 4/pi**2 * (atan(w_b / h_b) - atan(w_a / h_a))**2``.

    ``eps`` is added to the heights, as in the CIoU reference code.
    """
    wa, wb = box_wh(a), box_wh(b)
    diff = torch.atan(wb[..., 0] / (wb[..., 1] + eps)) - \
        torch.atan(wa[..., 0] / (wa[..., 1] + eps))
    return ASPECT_SCALE * diff**2


def extended_intersection(a: Tensor, b: Tensor) -> Tensor:
    """The signed "extended" overlap of the EIoU reference (libfacedetection).

    With ``i_lo = max(lo)``, ``i_hi = min(hi)``, the enclosing corner
    ``e = min(lo)`` and ``X_k = i_k - e`` (same for Y), the overlap area
    ``(X_hi - X_lo) * (Y_hi - Y_lo)`` is written as the signed sum
    ``X_hi*Y_hi + X_min*Y_min - X_lo*Y_max - X_max*Y_lo``, where ``min``/
    ``max`` sort the pair ``(X_lo, X_hi)``. For overlapping boxes this is
    the intersection; for disjoint boxes it turns negative and keeps a
    gradient that pulls the boxes together.
    """
    lo = torch.maximum(a[..., :2], b[..., :2])
    hi = torch.minimum(a[..., 2:], b[..., 2:])
    corner = torch.minimum(a[..., :2], b[..., :2])
    first = torch.minimum(lo, hi) - corner
    last = torch.maximum(lo, hi) - corner
    lo_c = lo - corner
    hi_c = hi - corner
    return (hi_c[..., 0] * hi_c[..., 1] + first[..., 0] * first[..., 1] -
            lo_c[..., 0] * last[..., 1] - last[..., 0] * lo_c[..., 1])


def scale_boxes(boxes: Tensor, ratio: float) -> Tensor:
    """Boxes scaled by ``ratio`` about their centres (Inner-IoU's auxiliary
    boxes): ``centre +- ratio * (w, h) / 2``."""
    centre = box_centre(boxes)
    half = box_wh(boxes) * (0.5 * ratio)
    return torch.cat([centre - half, centre + half], dim=-1)


def nonfinite_rows(a: Tensor, b: Tensor, total: bool = False,
                   buffer: bool = True) -> Tensor:
    """0 for each box pair whose eight coordinates are finite, NaN for a
    pair with an Inf or NaN among them, shape (...); with ``total``, their
    sum (a scalar: NaN if any pair is not finite).

    A box loss adds it to its element-wise loss (or, reduced, to its mean
    or sum): an infinite coordinate can make a loss finite (``I / Inf =
    0``, a clamp, a max), which would hide it from ``MMLOSS_CHECK_FINITE``;
    with this term a non-finite input always gives a non-finite loss.
    ``x * 0`` is 0 for finite ``x`` and NaN for Inf or NaN (never an
    overflow, unlike a sum of the coordinates); no gradient and no host
    sync.

    The rows and, by default, the total are sums of those zeros: one buffer
    of the inputs' size, next to a plain formula's many, and the fewest
    ops (a full sum, not the slower sum over each row's four coordinates,
    is what a reduced loss needs). With ``buffer=False`` the total is made
    from each input's ``aminmax`` instead (NaN propagates, and an infinite
    coordinate is the minimum or maximum): one reading pass and no buffer,
    for the fused kernels that keep none.
    """
    # detached inputs, not a no_grad context: no graph either way, and no
    # Python context manager on every call of a box loss
    a, b = a.detach(), b.detach()
    if total and not buffer:
        ends = []
        for boxes in (a, b):
            if boxes.numel():
                ends.extend(torch.aminmax(boxes))
        if not ends:
            return a.new_zeros(())
        return torch.stack(ends).mul_(0).sum()
    # a * 0 + 0 * b in two passes (add_'s alpha multiplies b: 0 * Inf and
    # 0 * NaN are NaN; tested)
    zeros = (a * 0).add_(b, alpha=0)
    return zeros.sum() if total else zeros.sum(-1)


#: From this many rows :func:`row_major` copies column by column.
_COLUMN_COPY_ROWS = 4096


def column_major(boxes: Tensor) -> Tensor:
    """The same (N, 4) boxes stored coordinate by coordinate.

    Slices such as ``boxes[:, :2]`` of a row-major (N, 4) tensor are strided
    with an inner extent of 2, which elementwise kernels walk slowly; in
    column-major storage each slice is one contiguous run per coordinate.

    The copy stacks the four coordinate columns into a (4, N) buffer (four
    one-dimensional copies, exact, differentiable, and unaffected by
    autocast) and returns its transpose; other shapes get
    ``boxes.t().contiguous().t()``. Boxes already stored so are returned
    as they are.
    """
    if boxes.dim() == 2 and boxes.stride() == (1, boxes.shape[0]):
        return boxes
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        return boxes.t().contiguous().t()
    return torch.stack(boxes.unbind(-1)).t()


def row_major(columns: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """The (N, k) rows of a :func:`column_major` tensor, contiguous.

    With ``out`` (a contiguous (N, k) tensor, for example rows of a larger
    buffer) the rows are written there and ``out`` is returned. The copy is
    elementwise and exact (no product, so autocast and TF32 cannot touch
    it): column by column for a column-major ``columns`` of many rows (one
    strided one-dimensional copy per coordinate, which runs at copy speed
    where a two-dimensional transposing copy does not), else ``copy_``. A
    contiguous ``columns`` without ``out`` is returned as it is.
    """
    if out is None:
        if columns.is_contiguous() or (torch.is_grad_enabled()
                                       and columns.requires_grad):
            return columns.contiguous()
        out = columns.new_empty(columns.shape)
    if columns.dim() == 2 and columns.shape[0] >= _COLUMN_COPY_ROWS and \
            columns.stride(0) == 1 and columns.shape[1] <= 8:
        for k in range(columns.shape[1]):
            out[:, k].copy_(columns[:, k])
        return out
    return out.copy_(columns)


def pair_backward(pred: Tensor, target: Tensor, *, inter_wh=None,
                  pred_wh=None, target_wh=None, enclose_wh=None,
                  offset=None, need_target: bool = False):
    """Chain gradients of the pair primitives back to the corners.

    ``pred`` and ``target`` are (N, 4) (fastest in :func:`column_major`
    storage). Each keyword is the gradient (N, 2) of the loss w.r.t. one
    primitive, taken *before* any clamp (callers apply their clamp masks):

    * ``inter_wh``: ``min(hi) - max(lo)``
    * ``pred_wh`` / ``target_wh``: ``hi - lo`` of each box
    * ``enclose_wh``: ``max(hi) - min(lo)``
    * ``offset``: :func:`centre_offset`, ``(t_lo + t_hi) - (p_lo + p_hi)``

    With ``s = sign(pred - target) / 2`` the shares of ``max``/``min`` are
    ``1/2 +- s`` (ties: 1/2), which folds the four corner rules into

    ``grad_pred = [-A, A] - s * D - offset`` with ``A = (G_i + G_e)/2 + G_p``
    and ``D = G_i - G_e`` (``+ s * D + offset`` and ``G_t`` for the target).

    Returns:
        (Tensor, Tensor | None): gradients for ``pred`` and (when
        ``need_target``) ``target``, each (N, 4), column-major.
    """
    n = pred.shape[0]

    def planes(grad):  # (N, 2) -> (2, N), contiguous for column-major
        return None if grad is None else grad.t()

    g_inter, g_enclose = planes(inter_wh), planes(enclose_wh)
    if g_inter is None and g_enclose is None:
        both = half_diff = pred.new_zeros(())
    elif g_enclose is None:  # skip the zero terms
        both = half_diff = g_inter * 0.5
    elif g_inter is None:
        both = g_enclose * 0.5
        half_diff = -both
    else:
        both = (g_inter + g_enclose) * 0.5
        half_diff = (g_inter - g_enclose) * 0.5
    # -turn of the docstring: sign(target - pred) / 2 * D - offset
    turn = torch.sign(target - pred).t().reshape(2, 2, n) * half_diff
    if offset is not None:
        turn = turn - planes(offset)
    # d(hi - lo)/d(lo, hi) = (-1, +1)
    direction = pred.new_tensor([-1.0, 1.0]).view(2, 1, 1)

    def corner_grads(size_grad, turned):
        a = both if size_grad is None else both + planes(size_grad)
        return torch.addcmul(turned, direction, a).view(4, n).t()

    grad_pred = corner_grads(pred_wh, turn)
    grad_target = None
    if need_target:
        grad_target = corner_grads(target_wh, -turn)
    return grad_pred, grad_target
