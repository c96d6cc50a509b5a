"""The IoU family of box-regression losses.

Boxes are ``(x1, y1, x2, y2)``, shape ``(..., 4)``; ``pred[i]`` is compared
with ``target[i]``. Every loss is built from :mod:`mmloss.geometry`:

* MMDetection 3.3 twins (same names, arguments, defaults and values):
  :func:`iou_loss`, :func:`giou_loss`, :func:`diou_loss`, :func:`ciou_loss`,
  :func:`eiou_loss`, :func:`siou_loss`, :func:`bounded_iou_loss` and the
  modules ``IoULoss``, ``GIoULoss``, ``DIoULoss``, ``CIoULoss``, ``EIoULoss``,
  ``SIoULoss``, ``BoundedIoULoss``.
* Newer losses: Alpha-IoU, Wise-IoU (v1/v2/v3), MPDIoU, Focal-EIoU, and the
  Inner-IoU / Focaler-IoU modifiers that apply to every IoU variant.

Speed: IoU, GIoU, DIoU, CIoU, SIoU and EIoU run through one
``torch.autograd.Function`` (:class:`_LocalJacobian`) with a hand-derived
gradient: each loss element depends on one box pair only, so the forward
pass computes the (N, 4) Jacobian next to the loss from the same
intermediates (in column-major storage) and saves just that, where autograd
keeps a dozen or more per-box temporaries; backward is one product.
The cores run on blocks of 32768 or 65536 boxes (:func:`_run_chunked`), so
only the loss and the Jacobian are full size and, from about 100k boxes up,
the peak memory stays below the formula's graph (a single block, below that,
holds 1.7-2.4x mmdet's peak: smaller blocks would fall under torch's 32768-
element grain for two threads); column-major copies and the final transpose
go through an exact identity product (:func:`mmloss.geometry.column_major`).
With ``reduction='mean'`` or ``'sum'`` (every module call but ``'none'``)
the reduction runs inside the Function too (:class:`_ReducedJacobian`):
each block's weighted Jacobian goes straight into the (N, 4) gradient and
only block sums remain, so backward is one in-place scaling.
``fast=False`` selects the plain autograd formula (the tests check that both
agree). Bounded IoU, whose loss is per coordinate, saves four partials
per box instead (:class:`_BoundedIoUJacobian`).

Deliberate differences from MMDetection (all where mmdet gives NaN/Inf or
has no defined result):

* CIoU of identical boxes: mmdet's trade-off weight ``v / (1 - IoU + v)`` is
  ``0/0``; here it is 0 (the aspect term vanishes), so the loss is finite.
* Half/bfloat16 boxes are computed in float32 and cast back, so areas of
  boxes a few hundred pixels wide no longer overflow to Inf.
* SIoU of two zero-width (or zero-height) boxes: mmdet's shape term is
  ``0/0``; here it is 0 (equal widths).
* The mean of an empty input is 0 (connected to the graph), not NaN.
* All-zero weights: mmdet returns ``(pred * weight).sum()`` after checking
  ``any(weight > 0)`` on the host; here the ordinary weighted reduction
  gives the same zero (and zero gradient) without a host sync. With
  ``reduction='none'`` the result therefore keeps its element-wise shape
  (mmdet returns a scalar 0 there for every loss but ``IoULoss``).
  Negative weights (meaningless for a loss) are not special-cased.
* Extensions where mmdet raises or misbehaves: boxes with leading
  dimensions (..., 4); ``BoundedIoULoss`` also takes per-box weights (n,),
  broadcast over the four coordinates (mmdet needs (n, 4)); unexpected
  keyword arguments raise ``TypeError``; asserts are ``ValueError``s.
* Gradients where mmdet's are NaN/Inf at a degenerate point (e.g. SIoU with
  a zero-size enclosing box and no centre offset) are 0 in the fast paths.
* Non-finite input stays non-finite: in the fast paths a box with a NaN or
  infinite coordinate gives NaN for that whole box (the identity-product
  copy multiplies 0 by inf), where mmdet may give a finite loss for some
  infinite boxes. NaN is never masked.
"""
import functools
import math
import warnings
from types import SimpleNamespace
from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from .. import geometry as geo
from ..checks import (check_avg_factor, check_box_shape, check_in_range,
                      check_positive, check_reduction, check_tensor,
                      check_weight_shape)
from ..gradients import scale_saved_grad
from ..reduction import reduce_weighted_sum, weight_reduce_loss, weighted_loss
from ..registry import MODELS
from .base import BaseLoss

__all__ = [
    # metrics (similarities, plain autograd)
    'iou_terms', 'focaler_iou',
    # mmdet twins
    'iou_loss', 'giou_loss', 'diou_loss', 'ciou_loss', 'eiou_loss',
    'siou_loss', 'bounded_iou_loss',
    # beyond mmdet
    'variant_iou_loss', 'alpha_iou_loss', 'wise_iou_loss', 'mpdiou_loss',
    'focal_eiou_loss',
    # modules
    'IoULoss', 'GIoULoss', 'DIoULoss', 'CIoULoss', 'EIoULoss', 'SIoULoss',
    'BoundedIoULoss', 'VariantIoULoss', 'AlphaIoULoss', 'WiseIoULoss',
    'MPDIoULoss', 'FocalEIoULoss'
]

IOU_MODES = ('iou', 'giou', 'diou', 'ciou')
#: the variants Inner-IoU / Focaler-IoU apply to
VARIANT_MODES = IOU_MODES + ('siou', )
SCALE_MODES = ('linear', 'square', 'log')

# ``bbox_overlaps`` (used by mmdet's IoU loss) floors the union at this.
_UNION_FLOOR = 1e-6


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den``, with ``0 / 0`` taken as ``0`` (``x / 0`` stays Inf).

    The denominator of a ``0 / 0`` becomes 1 before dividing, so no NaN
    reaches the value or the gradient.
    """
    # 1 - |sign| is 1.0 exactly at zero, else 0 (NaN stays NaN): float
    # arithmetic, cheaper than comparisons and a boolean cast
    both_zero = (1 - torch.sign(den).abs()) * (1 - torch.sign(num).abs())
    return num / (den + both_zero)


# ---------------------------------------------------------------------------
# Metrics: IoU and its penalties, composed from the geometry
# ---------------------------------------------------------------------------
def _diou_terms(pred: Tensor, target: Tensor, eps: float):
    """IoU ``I/(U+eps)`` and DIoU's penalty ``rho**2 / (c**2 + eps)``."""
    iou = geo.aligned_iou(pred, target, eps)
    penalty = geo.centre_distance_sq(pred, target) / \
        geo.enclosing_diagonal_sq(pred, target, eps)
    return iou, penalty


def _ciou_weight(iou: Tensor, v: Tensor) -> Tensor:
    """CIoU's trade-off ``alpha = [IoU > 0.5] v / (1 - IoU + v)``, detached.

    The ``0/0`` of identical boxes (``IoU = 1``, ``v = 0``) is taken as 0.
    """
    with torch.no_grad():
        # sign(iou - 1/2) clamped at 0: the float gate [IoU > 0.5]
        return _safe_div(torch.sign(iou - 0.5).clamp_(min=0) * v,
                         1 - iou + v)


def iou_terms(pred: Tensor, target: Tensor, mode: str = 'giou',
              eps: float = 1e-7):
    """``(IoU, penalty)`` of an IoU variant; the metric is ``IoU - penalty``.

    * ``iou``:  ``IoU = I / (U + eps)``, penalty 0
    * ``giou``: ``IoU = I / max(U, eps)``, penalty ``(C - U) / C`` with ``C``
      the enclosing area, ``max(C, eps)`` (Rezatofighi et al., CVPR 2019)
    * ``diou``: penalty ``rho**2 / (c**2 + eps)``: squared centre distance
      over the squared enclosing diagonal (Zheng et al., AAAI 2020)
    * ``ciou``: DIoU's penalty ``+ alpha * v`` with the aspect consistency
      ``v = 4/pi**2 (atan(w_t/h_t) - atan(w_p/h_p))**2`` and the detached
      ``alpha = [IoU > 0.5] v / (1 - IoU + v)`` (Zheng et al., TCYB 2021)

    Args:
        pred, target (Tensor): boxes, shape (..., 4), float32/64.
        mode (str): one of ``'iou'``, ``'giou'``, ``'diou'``, ``'ciou'``.
        eps (float): stabiliser, as in MMDetection.

    Returns:
        (Tensor, Tensor): IoU and penalty, each of shape (...).
    """
    if mode == 'iou':
        iou = geo.aligned_iou(pred, target, eps)
        return iou, torch.zeros_like(iou)
    if mode == 'giou':
        inter, union = geo.box_inter_union(pred, target)
        union = union.clamp(min=eps)
        enclose = geo.enclosing_area(pred, target).clamp(min=eps)
        return inter / union, (enclose - union) / enclose
    iou, penalty = _diou_terms(pred, target, eps)
    if mode == 'diou':
        return iou, penalty
    if mode == 'ciou':
        v = geo.aspect_consistency(pred, target, eps)
        return iou, penalty + _ciou_weight(iou, v) * v
    raise ValueError(f'iou_terms: mode must be one of {IOU_MODES}, '
                     f'but got {mode!r}')


def focaler_iou(iou: Tensor, low: float = 0.0, high: float = 0.95) -> Tensor:
    """Focaler-IoU's linear interval mapping of the IoU.

    ``IoU_f = clamp((IoU - d) / (u - d), 0, 1)`` with ``[d, u] = [low,
    high]``: samples with IoU below ``d`` give no gradient, above ``u`` count
    as perfect, and ``[d, u]`` is stretched to ``[0, 1]`` (Zhang & Zhang,
    "Focaler-IoU: More Focused Intersection over Union Loss", 2024,
    arXiv:2401.10525).
    """
    return ((iou - low) / (high - low)).clamp(min=0, max=1)


# ---------------------------------------------------------------------------
# Fast paths: hand-written backward, saving only the per-box Jacobian
# ---------------------------------------------------------------------------
def _masked(mask: Tensor, value: Tensor) -> Tensor:
    """``value`` where ``mask``, else 0 (a clamp's gradient gate).

    A product with the mask: several times faster than ``torch.where`` on
    CPU, and the same for the finite values gated here. Float masks (see
    :func:`_ge_gate`) are faster still than boolean ones, whose comparison
    and dtype cast each cost a few plain products.
    """
    return value * mask


class _Overlap:
    """Intersection/union of a box pair, recomputed in backward."""

    def __init__(self, pred: Tensor, target: Tensor):
        self.pred, self.target = pred, target
        self.inter_raw = torch.minimum(pred[..., 2:], target[..., 2:]) - \
            torch.maximum(pred[..., :2], target[..., :2])
        self.inter_wh = self.inter_raw.clamp(min=0)
        self.inter = self.inter_wh[..., 0] * self.inter_wh[..., 1]
        self.pred_wh = geo.box_wh(pred)
        self.target_wh = geo.box_wh(target)
        self.union = self.pred_wh[..., 0] * self.pred_wh[..., 1] + \
            self.target_wh[..., 0] * self.target_wh[..., 1] - self.inter

    def enclose(self):
        """Enclosing width/height before and after ``clamp(min=0)``."""
        raw = torch.maximum(self.pred[..., 2:], self.target[..., 2:]) - \
            torch.minimum(self.pred[..., :2], self.target[..., :2])
        return raw, raw.clamp(min=0)

    def backward(self, g_inter: Tensor, g_union: Tensor, need_target: bool,
                 **extra):
        """Gradients of ``g_inter * I + g_union * U (+ extra primitives)``.

        ``extra`` are further primitive gradients for
        :func:`mmloss.geometry.pair_backward`; ``pred_wh``/``target_wh`` in
        it are added to the area terms of the union.
        """
        g_inter = (g_inter - g_union).unsqueeze(-1)
        g_union = g_union.unsqueeze(-1)
        inter_wh = (g_inter * self.inter_wh.flip(-1)).mul_(
            _ge_gate(self.inter_raw, 0.0))
        pred_wh = g_union * self.pred_wh.flip(-1)
        if 'pred_wh' in extra:
            pred_wh = pred_wh + extra.pop('pred_wh')
        target_wh = None
        if need_target:
            target_wh = g_union * self.target_wh.flip(-1)
            if 'target_wh' in extra:
                target_wh = target_wh + extra.pop('target_wh')
        extra.pop('target_wh', None)
        return geo.pair_backward(self.pred, self.target, inter_wh=inter_wh,
                                 pred_wh=pred_wh, target_wh=target_wh,
                                 need_target=need_target, **extra)


def _scaled(iou: Tensor, mode: str) -> Tensor:
    if mode == 'linear':
        return 1 - iou
    if mode == 'square':
        return 1 - iou**2
    return -iou.log()


def _ge_gate(x: Tensor, bound: float) -> Tensor:
    """``1.0`` where ``x >= bound``, else ``0.0`` (NaN stays NaN): the
    gradient gate of ``clamp(min=bound)``, in float for cheap products (the
    sign of ``x - bound`` is exact)."""
    return torch.sign(x - bound).add_(1).clamp_(max=1)


def _iou_loss_core(pred, target, need_grad, need_target, mode, eps):
    """``iou_loss`` and its per-box Jacobian (see :class:`_LocalJacobian`).

    Works on the (4, n) coordinate planes of the column-major boxes, with
    in-place arithmetic: few passes and few live temporaries.
    """
    p, t = pred.t(), target.t()
    inter_wh = torch.minimum(p[2:], t[2:]).sub_(torch.maximum(p[:2], t[:2]))
    inter_gate = _ge_gate(inter_wh, 0.0) if need_grad and eps <= 0 else None
    inter_wh.clamp_(min=0)
    inter = inter_wh[0] * inter_wh[1]
    wh_p, wh_t = p[2:] - p[:2], t[2:] - t[:2]
    union_raw = (wh_p[0] * wh_p[1]).add_(wh_t[0] * wh_t[1]).sub_(inter)
    union = union_raw.clamp(min=_UNION_FLOOR)
    iou = inter.div_(union)
    clamped = iou.clamp(min=eps)
    loss = _scaled(clamped, mode)
    if not need_grad:
        return loss, None, None
    if mode == 'linear':
        g_iou = _ge_gate(iou, eps).neg_()
    elif mode == 'square':
        g_iou = clamped.mul_(-2).mul_(_ge_gate(iou, eps))
    else:
        g_iou = clamped.reciprocal_().neg_().mul_(_ge_gate(iou, eps))
    # iou = I / U with U = A_p + A_t - I (U floored): dU/dI = -1
    g_area = (g_iou * iou).div_(union).mul_(_ge_gate(union_raw, _UNION_FLOOR))
    g_inter = g_iou.div_(union).add_(g_area)
    del union, union_raw, iou
    # d I / d (w_i, h_i) = (h_i, w_i); d A / d (w, h) = (h, w)
    g_inter_wh = inter_wh.flip(0).mul_(g_inter)
    if inter_gate is not None:
        g_inter_wh.mul_(inter_gate)
    # ties of min/max share half: pred's share of the overlap's hi corner
    # is 1/2 + sign(t - p)/2, of its lo corner 1/2 - sign(t - p)/2
    half = torch.sign(t - p).mul_(0.5)

    def corner_grads(wh, lo_share, hi_share):
        g_wh = wh.flip(0).mul_(g_area).neg_()  # d loss / d (w, h)
        jac = torch.empty_like(half)
        torch.addcmul(g_wh, hi_share, g_inter_wh, out=jac[2:])
        torch.mul(lo_share, g_inter_wh, out=jac[:2]).neg_().sub_(g_wh)
        return jac.t()

    grad_pred = corner_grads(wh_p, 0.5 - half[:2], 0.5 + half[2:])
    grad_target = None
    if need_target:
        grad_target = corner_grads(wh_t, 0.5 + half[:2], 0.5 - half[2:])
    return loss, grad_pred, grad_target


def _giou_loss_core(pred, target, need_grad, need_target, eps):
    """``1 - GIoU`` (``bbox_overlaps`` form) and its per-box Jacobian."""
    ov = _Overlap(pred, target)
    union = ov.union.clamp(min=eps)
    enc_raw, enc_wh = ov.enclose()
    enclose_raw = enc_wh[..., 0] * enc_wh[..., 1]
    enclose = enclose_raw.clamp(min=eps)
    iou = ov.inter / union
    loss = 1 - (iou - (enclose - union) / enclose)
    if not need_grad:
        return loss, None, None
    # loss = 1 - I/U + (C - U)/C = 2 - I/U - U/C
    g_inter = -1 / union
    g_union = (iou / union - 1 / enclose).mul_(_ge_gate(ov.union, eps))
    g_enclose = (union / enclose**2).mul_(_ge_gate(enclose_raw, eps))
    enclose_wh = _masked(_ge_gate(enc_raw, 0.0),
                         g_enclose.unsqueeze(-1) * enc_wh.flip(-1))
    return (loss, ) + ov.backward(g_inter, g_union, need_target,
                                  enclose_wh=enclose_wh)


def _diou_loss_core(pred, target, need_grad, need_target, eps, ciou):
    """``1 - DIoU`` or ``1 - clamp(CIoU, -1, 1)`` and the per-box Jacobian."""
    ov = _Overlap(pred, target)
    union = ov.union + eps
    iou = ov.inter / union
    enc_raw, enc_wh = ov.enclose()
    diag = enc_wh[..., 0]**2 + enc_wh[..., 1]**2 + eps
    offset = geo.centre_offset(pred, target)
    rho = offset[..., 0]**2 / 4 + offset[..., 1]**2 / 4
    penalty = rho / diag
    if ciou:
        # atan(w / (h + eps)) of each box, as geo.aspect_consistency
        p_h = ov.pred_wh[..., 1] + eps
        t_h = ov.target_wh[..., 1] + eps
        p_r = ov.pred_wh[..., 0] / p_h
        t_r = ov.target_wh[..., 0] / t_h
        diff = torch.atan(t_r) - torch.atan(p_r)
        v = geo.ASPECT_SCALE * diff**2
        alpha = _ciou_weight(iou, v)
        metric = iou - (penalty + alpha * v)
        loss = 1 - metric.clamp(min=-1.0, max=1.0)
    else:
        loss = 1 - (iou - penalty)
    if not need_grad:
        return loss, None, None
    one = iou.new_ones(())
    extra = {}
    if ciou:
        one = _ge_gate(-metric.abs(), -1.0)  # the clamp's gate
        # d loss / d diff = alpha * dv/d diff (alpha is a constant)
        g_diff = one * alpha * (2 * geo.ASPECT_SCALE) * diff
        g_p = -g_diff / (1 + p_r**2) / p_h
        # (2, n) planes viewed as (n, 2): column-major like the boxes
        extra['pred_wh'] = torch.stack([g_p, -g_p * p_r]).t()
        if need_target:
            g_t = g_diff / (1 + t_r**2) / t_h
            extra['target_wh'] = torch.stack([g_t, -g_t * t_r]).t()
    # loss = 1 - I/(U + eps) + rho/diag
    g_inter = -one / union
    g_union = one * iou / union
    g_diag = -one * rho / diag**2
    extra['enclose_wh'] = _masked(_ge_gate(enc_raw, 0.0),
                                  (2 * g_diag).unsqueeze(-1) * enc_wh)
    extra['offset'] = (one / diag / 2).unsqueeze(-1) * offset
    return (loss, ) + ov.backward(g_inter, g_union, need_target, **extra)


# double blocks: at 200k boxes still below mmdet's peak memory (IoU's is the
# tight one: 0.8x)
_giou_loss_core.block_scale = _diou_loss_core.block_scale = 2
_iou_loss_core.block_scale = 2


class _LocalJacobian(torch.autograd.Function):
    """Element-wise box loss with a hand-derived gradient.

    Loss ``i`` depends only on box pair ``i``, so its full Jacobian is one
    (N, 4) row per differentiable input. The forward pass computes it next
    to the loss from the same intermediates (no recomputation, no graph of
    a dozen per-box temporaries) and saves only that; backward is a single
    product. ``core(pred, target, need_grad, need_target, *args)`` returns
    ``(loss, d loss/d pred, d loss/d target)``; boxes are (N, 4).
    """

    @staticmethod
    def forward(ctx, core, pred, target, *args):
        need_pred, need_target = ctx.needs_input_grad[1:3]
        loss, jac_pred, jac_target = _run_chunked(
            core, pred, target, need_pred or need_target, need_target, *args)
        ctx.save_for_backward(jac_pred, jac_target)
        ctx.extra = len(args)
        return loss

    @staticmethod
    def backward(ctx, grad):
        jac_pred, jac_target = ctx.saved_tensors
        grad_pred = None if jac_pred is None else _chain(grad, jac_pred)
        grad_target = None
        if ctx.needs_input_grad[2] and jac_target is not None:
            grad_target = _chain(grad, jac_target)
        return (None, grad_pred, grad_target) + (None, ) * ctx.extra


#: Rows per block of :func:`_run_chunked`: big enough that op overheads
#: stay small and the elementwise kernels still split over two threads
#: (torch's grain is 32768 elements), small enough that a core's dozens of
#: temporaries stay in cache and far below the full-size tensors' memory.
_CHUNK = 32768


def _block_rows(core) -> int:
    """Rows per block for ``core``: :data:`_CHUNK` times its
    ``block_scale`` (cores whose mmdet twin leaves room in memory take
    larger blocks: fewer, longer kernels, which two threads share better)."""
    return _CHUNK * getattr(core, 'block_scale', 1)


def _blocks(n: int, core):
    """``(start, stop)`` of equal blocks of at most :func:`_block_rows`
    rows covering ``range(n)`` (equal, so no short block at the end pays
    the per-op overheads for few rows)."""
    count = max(1, -(-n // _block_rows(core)))
    size = max(1, -(-n // count))
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _run_chunked(core, pred: Tensor, target: Tensor, need_grad: bool,
                 need_target: bool, *args):
    """A :class:`_LocalJacobian` core over (N, 4) boxes, block by block.

    Each element depends on its own box pair only, so blocks of rows are
    independent. Only the (N,) loss and the column-major (N, 4) Jacobians
    are full size; a core's many per-box temporaries live one block at a
    time (see :func:`_blocks`, and the module docstring for where that
    keeps the peak memory below autograd's graph of the formula).
    """
    n = pred.shape[0]
    if n <= _block_rows(core):
        return core(geo.column_major(pred), geo.column_major(target),
                    need_grad, need_target, *args)
    loss = None
    jac_planes = [None, None]
    for start, stop in _blocks(n, core):
        parts = core(geo.column_major(pred[start:stop]),
                     geo.column_major(target[start:stop]), need_grad,
                     need_target, *args)
        if loss is None:
            shape = (n, ) + parts[0].shape[1:]
            if parts[0].dim() == 2 and parts[0].stride(0) == 1:
                # a column-major (n, k) loss stays column-major
                loss = parts[0].new_empty(shape[::-1]).t()
            else:
                loss = parts[0].new_empty(shape)
        loss[start:stop] = parts[0]
        for k, jac in enumerate(parts[1:]):
            if jac is None:
                continue
            if jac_planes[k] is None:
                jac_planes[k] = jac.new_empty((4, n))
            jac_planes[k][:, start:stop] = jac.t()
        del parts
    return (loss, ) + tuple(None if planes is None else planes.t()
                            for planes in jac_planes)


def _chain(grad: Tensor, jac: Tensor) -> Tensor:
    """``grad[:, None] * jac`` as a contiguous (N, 4) tensor.

    The Jacobians come column-major (see :func:`mmloss.geometry.
    column_major`): the product runs on the contiguous (4, N) planes, where
    ``grad`` broadcasts along rows, and :func:`mmloss.geometry.row_major`
    transposes (a non-contiguous gradient would be copied by autograd
    anyway, more slowly), block by block so that no full-size temporary
    sits beside the Jacobian and the result. Out of place: the saved
    Jacobian must survive a second backward through a retained graph.
    """
    if not (jac.dim() == 2 and jac.stride(0) == 1):
        return grad.unsqueeze(-1) * jac
    n = jac.shape[0]
    if n <= _CHUNK:
        return geo.row_major((jac.t() * grad).t())
    out = jac.new_empty(jac.shape)
    planes = jac.t()
    grad = grad.expand(n)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        out[start:stop] = geo.row_major(
            (planes[:, start:stop] * grad[start:stop]).t())
    return out


# ---------------------------------------------------------------------------
# MMDetection twins (pure functions)
# ---------------------------------------------------------------------------
def _unflat(loss: Tensor, pred: Tensor) -> Tensor:
    """Back to ``pred``'s leading dims and dtype."""
    return geo.restore_dtype(loss.reshape(pred.shape[:-1] + loss.shape[1:]),
                             pred)


def _fast(core, pred: Tensor, target: Tensor, *args) -> Tensor:
    """Run a :class:`_LocalJacobian` core on boxes of any leading shape."""
    flat_pred, flat_target = pred.reshape(-1, 4), target.reshape(-1, 4)
    if torch.is_grad_enabled() and (pred.requires_grad
                                    or target.requires_grad):
        loss = _LocalJacobian.apply(core, flat_pred, flat_target, *args)
    else:  # no backward will come: skip the Jacobian
        loss = _run_chunked(core, flat_pred, flat_target, False, False,
                            *args)[0]
    return loss.view(pred.shape[:-1])


class _Reduction(NamedTuple):
    """How :func:`_run` weights and reduces (see :func:`_weighted_box_loss`).
    """
    loss_name: str
    weight: Optional[Tensor] = None
    reduction: str = 'none'
    avg_factor: Optional[Union[float, Tensor]] = None


#: :func:`_run`'s default: the element-wise loss, as it is
_ELEMENTWISE = _Reduction('box loss')


def _weighted_box_loss(loss_func):
    """:func:`mmloss.reduction.weighted_loss` for the :func:`_run` losses.

    The wrapped function takes ``weight``, ``reduction`` and ``avg_factor``
    (same rules, same signature) and hands them to :func:`_run` as the
    keyword ``reduce``, which fuses a ``'mean'`` or ``'sum'`` into the fast
    Function (:class:`_ReducedJacobian`) where it can and otherwise applies
    :func:`mmloss.reduction.weight_reduce_loss` to the element-wise loss.
    """
    name = loss_func.__name__

    @functools.wraps(loss_func)
    def wrapper(pred: Tensor, target: Tensor,
                weight: Optional[Tensor] = None, reduction: str = 'mean',
                avg_factor: Optional[Union[float, Tensor]] = None,
                **kwargs) -> Tensor:
        check_reduction(name, reduction)
        return loss_func(pred, target,
                         reduce=_Reduction(name, weight, reduction,
                                           avg_factor), **kwargs)

    return wrapper


def _fusable(pred: Tensor, target: Tensor, reduce: _Reduction) -> bool:
    """Whether :class:`_ReducedJacobian` gives ``reduce``'s result.

    It needs a backward to come (else the Jacobian is wasted work), boxes
    that are not upcast (same float32/float64 dtype), and a weight that is
    a constant of the loss's exact shape and dtype; anything else (fp16,
    broadcast or differentiable weights, a differentiable ``avg_factor``,
    empty input, ``'sum'`` with ``avg_factor``, which raises) takes the
    element-wise path.
    """
    if reduce.reduction == 'none' or pred.numel() == 0:
        return False
    if reduce.reduction == 'sum' and reduce.avg_factor is not None:
        return False
    if not (torch.is_grad_enabled()
            and (pred.requires_grad or target.requires_grad)):
        return False
    if pred.dtype not in (torch.float32, torch.float64) or \
            target.dtype != pred.dtype or pred.device != target.device:
        return False
    weight, avg_factor = reduce.weight, reduce.avg_factor
    if weight is not None and (weight.requires_grad
                               or weight.dtype != pred.dtype
                               or weight.shape != pred.shape[:-1]
                               or weight.device != pred.device):
        return False
    return not (isinstance(avg_factor, Tensor) and avg_factor.requires_grad)


class _ReducedJacobian(torch.autograd.Function):
    """``sum_i w_i L_i`` of a :class:`_LocalJacobian` core, gradient in hand.

    The weighted sum is all a ``'mean'``/``'sum'`` reduction needs (the
    division by the count or ``avg_factor`` is a scalar op outside), so
    the forward pass runs the core block by block, folds each block's
    Jacobian times its weights straight into a row-major (N, 4) gradient
    buffer (the layout autograd hands on) and keeps only the block sums:
    no (N,) loss, no expanded incoming gradient, no product in backward.
    Backward scales the saved buffer by the incoming scalar, in place when
    the graph is freed (:func:`mmloss.gradients.scale_saved_grad`).

    Args (of ``apply``): ``core``, ``pred`` and ``target`` (N, 4),
    ``weight`` (N,) or None, then the core's extra arguments.
    """

    @staticmethod
    def forward(ctx, core, pred, target, weight, *args):
        need_pred, need_target = ctx.needs_input_grad[1:3]
        n = pred.shape[0]
        grads = [pred.new_empty((n, 4)) if need_pred else None,
                 target.new_empty((n, 4)) if need_target else None]
        sums = []
        for start, stop in _blocks(n, core):
            loss, *jacs = core(geo.column_major(pred[start:stop]),
                               geo.column_major(target[start:stop]), True,
                               need_target, *args)
            w = None if weight is None else weight[start:stop]
            sums.append(loss.sum() if w is None else torch.dot(loss, w))
            for buf, jac in zip(grads, jacs):
                if buf is None or jac is None:
                    continue
                if w is not None:
                    jac = jac * w.unsqueeze(-1)
                geo.row_major(jac, out=buf[start:stop])
            del loss, jacs
        ctx.save_for_backward(*grads)
        ctx.extra = len(args)
        return sums[0] if len(sums) == 1 else torch.stack(sums).sum()

    @staticmethod
    def backward(ctx, grad):
        grad_pred, grad_target = ctx.saved_tensors
        if grad_pred is not None and ctx.needs_input_grad[1]:
            grad_pred = scale_saved_grad(grad_pred, grad)
        if grad_target is not None and ctx.needs_input_grad[2]:
            grad_target = scale_saved_grad(grad_target, grad)
        return (None, grad_pred, grad_target, None) + (None, ) * ctx.extra


def _run(fast_core, plain, pred: Tensor, target: Tensor, fast: bool,
         *args, reduce: _Reduction = _ELEMENTWISE) -> Tensor:
    """Upcast, run the fast Function or the plain formula, cast back, then
    weight and reduce as ``reduce`` says (fused where :func:`_fusable`)."""
    if fast and _fusable(pred, target, reduce):
        total = _ReducedJacobian.apply(
            fast_core, pred.reshape(-1, 4), target.reshape(-1, 4),
            None if reduce.weight is None else reduce.weight.reshape(-1),
            *args)
        return reduce_weighted_sum(reduce.loss_name, total,
                                   pred.numel() // 4, reduce.reduction,
                                   reduce.avg_factor)
    p, t = geo.upcast(pred, target)
    if fast:
        loss = _fast(fast_core, p, t, *args)
    else:
        loss = plain(p, t, *args)
    # the default reduce (no weight, 'none') returns the loss as it is
    return weight_reduce_loss(geo.restore_dtype(loss, pred), reduce.weight,
                              reduce.reduction, reduce.avg_factor)


def _plain_iou_loss(pred, target, mode, eps):
    iou = geo.aligned_iou(pred, target, _UNION_FLOOR, floor=True)
    return _scaled(iou.clamp(min=eps), mode)


@_weighted_box_loss
def iou_loss(pred: Tensor, target: Tensor, linear: bool = False,
             mode: str = 'log', eps: float = 1e-6,
             fast: bool = True,
             reduce: _Reduction = _ELEMENTWISE) -> Tensor:
    """IoU loss (Yu et al., "UnitBox", ACM MM 2016), element-wise.

    ``IoU = max(I / max(U, 1e-6), eps)``, then ``1 - IoU`` (``'linear'``),
    ``1 - IoU**2`` (``'square'``) or ``-log IoU`` (``'log'``).

    Args:
        pred, target (Tensor): boxes (..., 4).
        linear (bool): deprecated, same as ``mode='linear'``.
        mode (str): ``'linear'``, ``'square'`` or ``'log'``.
        eps (float): lower clamp of the IoU.
        fast (bool): use the hand-written backward.

    Also takes ``weight``, ``reduction`` and ``avg_factor`` (see
    :func:`mmloss.reduction.weighted_loss`). Returns shape (...) or a scalar.
    """
    if linear:
        mode = 'linear'
        warnings.warn('iou_loss: linear=True is deprecated, use '
                      "mode='linear'", DeprecationWarning)
    if mode not in SCALE_MODES:
        raise ValueError(f'iou_loss: mode must be one of {SCALE_MODES}, '
                         f'but got {mode!r}')
    return _run(_iou_loss_core, _plain_iou_loss, pred, target, fast, mode,
                eps, reduce=reduce)


def _plain_giou_loss(pred, target, eps):
    iou, penalty = iou_terms(pred, target, 'giou', eps)
    return 1 - (iou - penalty)


@_weighted_box_loss
def giou_loss(pred: Tensor, target: Tensor, eps: float = 1e-7,
              fast: bool = True,
              reduce: _Reduction = _ELEMENTWISE) -> Tensor:
    """GIoU loss ``1 - IoU + (C - U) / C``, element-wise (shape (...)).

    ``C`` is the area of the smallest enclosing box; union and ``C`` are
    floored at ``eps``. Rezatofighi et al., "Generalized Intersection over
    Union", CVPR 2019, arXiv:1902.09630.
    """
    return _run(_giou_loss_core, _plain_giou_loss, pred, target, fast, eps,
                reduce=reduce)


def _plain_diou_loss(pred, target, eps, ciou):
    iou, penalty = iou_terms(pred, target, 'ciou' if ciou else 'diou', eps)
    metric = iou - penalty
    return 1 - (metric.clamp(min=-1.0, max=1.0) if ciou else metric)


@_weighted_box_loss
def diou_loss(pred: Tensor, target: Tensor, eps: float = 1e-7,
              fast: bool = True,
              reduce: _Reduction = _ELEMENTWISE) -> Tensor:
    """DIoU loss ``1 - I/(U + eps) + rho**2 / (c**2 + eps)``, element-wise.

    ``rho`` is the centre distance, ``c`` the enclosing box's diagonal.
    Zheng et al., "Distance-IoU Loss", AAAI 2020, arXiv:1911.08287.
    """
    return _run(_diou_loss_core, _plain_diou_loss, pred, target, fast, eps,
                False, reduce=reduce)


@_weighted_box_loss
def ciou_loss(pred: Tensor, target: Tensor, eps: float = 1e-7,
              fast: bool = True,
              reduce: _Reduction = _ELEMENTWISE) -> Tensor:
    """CIoU loss ``1 - clamp(IoU - rho**2/c**2 - alpha v, -1, 1)``.

    ``v = 4/pi**2 (atan(w_t/(h_t+eps)) - atan(w_p/(h_p+eps)))**2`` and the
    detached ``alpha = [IoU > 0.5] v / (1 - IoU + v)`` (0 for identical
    boxes, where mmdet gets 0/0). Zheng et al., "Enhancing Geometric Factors
    in Model Learning and Inference", TCYB 2021, arXiv:2005.03572.
    """
    return _run(_diou_loss_core, _plain_diou_loss, pred, target, fast, eps,
                True, reduce=reduce)


def _smooth(loss: Tensor, beta: float) -> Tensor:
    """Smooth-L1 shape: ``0.5 x**2 / beta`` below ``beta``, else
    ``x - 0.5 beta``."""
    return torch.where(loss < beta, 0.5 * loss * loss / beta,
                       loss - 0.5 * beta)


def _plain_eiou_loss(pred, target, smooth_point, eps):
    inter = geo.extended_intersection(pred, target)
    union = geo.box_area(pred) + geo.box_area(target) - inter + eps
    return _smooth(1 - inter / union, smooth_point)


def _eiou_loss_core(pred, target, need_grad, need_target, smooth_point,
                    eps):
    """Extended-IoU loss and its per-box Jacobian."""
    inter, lo, hi, lo_c, hi_c, first, last = \
        geo.extended_intersection_parts(pred, target)
    wh_p, wh_t = geo.box_wh(pred), geo.box_wh(target)
    union = wh_p[..., 0] * wh_p[..., 1] + wh_t[..., 0] * wh_t[..., 1] - \
        inter + eps
    x = 1 - inter / union
    loss = _smooth(x, smooth_point)
    if not need_grad:
        return loss, None, None
    g_x = (x / smooth_point).clamp(max=1.0)  # smooth-L1's slope
    # x = 1 - I/U with U = A_p + A_t - I + eps
    g_area = (g_x * inter / union**2).unsqueeze(-1)
    g_inter = (-g_x / union).unsqueeze(-1) - g_area
    # I = H_x H_y + F_x F_y - L_x M_y - M_x L_y (F/M: min/max of L, H)
    g_lo_c = -g_inter * last.flip(-1)
    g_last = -g_inter * lo_c.flip(-1)
    g_first = g_inter * first.flip(-1)
    g_hi_c = g_inter * hi_c.flip(-1)
    lo_share = 0.5 + 0.5 * torch.sign(hi - lo)  # d min(lo, hi) / d lo
    g_lo = g_lo_c + g_first * lo_share + g_last * (1 - lo_share)
    g_hi = g_hi_c + g_first * (1 - lo_share) + g_last * lo_share
    g_corner = -(g_lo_c + g_hi_c + g_first + g_last)
    # lo = max(lo), hi = min(hi), corner = min(lo) of the two boxes
    half = 0.5 * torch.sign(pred - target)
    lo_side, hi_side = half[..., :2], half[..., 2:]
    area_p = g_area * wh_p.flip(-1)
    grad_pred = _column_major_pair(
        g_lo * (0.5 + lo_side) + g_corner * (0.5 - lo_side) - area_p,
        g_hi * (0.5 - hi_side) + area_p)
    grad_target = None
    if need_target:
        area_t = g_area * wh_t.flip(-1)
        grad_target = _column_major_pair(
            g_lo * (0.5 - lo_side) + g_corner * (0.5 + lo_side) - area_t,
            g_hi * (0.5 + hi_side) + area_t)
    return loss, grad_pred, grad_target


def _column_major_pair(lo: Tensor, hi: Tensor) -> Tensor:
    """``cat([lo, hi], -1)`` of two (n, 2) halves, stored column-major (the
    layout :func:`_run_chunked` and :func:`_chain` work in)."""
    planes = lo.new_empty((4, lo.shape[0]))
    planes[:2] = lo.t()
    planes[2:] = hi.t()
    return planes.t()


# double blocks: still far below mmdet's peak memory
_eiou_loss_core.block_scale = 2


@_weighted_box_loss
def eiou_loss(pred: Tensor, target: Tensor, smooth_point: float = 0.1,
              eps: float = 1e-7, fast: bool = True,
              reduce: _Reduction = _ELEMENTWISE) -> Tensor:
    """Extended-IoU loss of libfacedetection, smoothed, element-wise.

    ``x = 1 - I_ext / (A_p + A_t - I_ext + eps)`` with the signed extended
    intersection :func:`mmloss.geometry.extended_intersection` (negative for
    disjoint boxes), then ``0.5 x**2 / s`` for ``x < s`` and ``x - 0.5 s``
    otherwise (``s = smooth_point``). Peng & Yu, "A Systematic IoU-Related
    Method: Beyond Simplified Regression for Better Localization", TIP 2021.
    """
    return _run(_eiou_loss_core, _plain_eiou_loss, pred, target, fast,
                smooth_point, eps, reduce=reduce)


def _siou_parts(pred: Tensor, target: Tensor, iou: Tensor, eps: float,
                neg_gamma: bool) -> SimpleNamespace:
    """SIoU's terms from its IoU; shared by the plain and the fast path."""
    x = SimpleNamespace(iou=iou)
    x.enclose_raw = torch.maximum(pred[..., 2:], target[..., 2:]) - \
        torch.minimum(pred[..., :2], target[..., :2])
    x.enclose = x.enclose_raw.clamp(min=eps)
    # summed left to right (not geo.centre_offset's grouping): thin boxes
    # make this offset cancel, and the reference rounds it this way
    x.s = (target[..., :2] + target[..., 2:] - pred[..., :2] -
           pred[..., 2:]) * 0.5 + eps
    # sin(alpha) of the smaller angle to an axis; 0/0 (no offset) -> 0
    x.sigma = (x.s[..., :1]**2 + x.s[..., 1:]**2).sqrt()
    sin = _safe_div(x.s.abs(), x.sigma)
    # 1.0 where sin_x > sqrt(1/2) (pick the y angle), else 0; the blend
    # below is exact (products with 0 and 1, sums with an exact 0) and
    # cheaper than torch.where
    x.pick_y = torch.sign(sin[..., 0] - math.sqrt(0.5)).clamp_(min=0)
    x.sin = sin[..., 1] * x.pick_y + sin[..., 0] * (1 - x.pick_y)
    angle = torch.cos(torch.asin(x.sin) * 2 - math.pi / 2)
    x.gamma = angle - 2 if neg_gamma else 2 - angle
    x.rho = (x.s / x.enclose)**2
    x.exp_rho = torch.exp(x.gamma.unsqueeze(-1) * x.rho)
    distance = 2 - x.exp_rho[..., 0] - x.exp_rho[..., 1]
    eps_h = pred.new_tensor([0.0, eps])
    x.wh_p, x.wh_t = geo.box_wh(pred) + eps_h, geo.box_wh(target) + eps_h
    x.size_diff = x.wh_p - x.wh_t
    x.size_max = torch.maximum(x.wh_p, x.wh_t)
    x.omega = _safe_div(x.size_diff.abs(), x.size_max)
    x.exp_omega = torch.exp(-x.omega)
    shape = (1 - x.exp_omega).pow(4).sum(-1)
    x.siou = iou - 0.5 * (distance + shape)
    x.loss = 1 - x.siou.clamp(min=-1.0, max=1.0)
    return x


def _plain_siou_loss(pred, target, eps, neg_gamma):
    return _siou_parts(pred, target, geo.aligned_iou(pred, target, eps), eps,
                       neg_gamma).loss


def _siou_loss_core(pred, target, need_grad, need_target, eps, neg_gamma):
    """SIoU loss and its per-box Jacobian (see :class:`_LocalJacobian`)."""
    ov = _Overlap(pred, target)
    union = ov.union + eps
    x = _siou_parts(pred, target, ov.inter / union, eps, neg_gamma)
    if not need_grad:
        return x.loss, None, None
    g_siou = _ge_gate(-x.siou.abs(), -1.0).neg_()  # the clamp's gate
    g_cost = (-0.5 * g_siou).unsqueeze(-1)  # d loss / d (distance, shape)
    # shape cost: sum (1 - e**-omega)**4, omega = |d| / max(w_p, w_t)
    g_omega = g_cost * 4 * (1 - x.exp_omega)**3 * x.exp_omega
    valid = torch.sign(x.size_max).abs_()  # 1.0 where != 0
    size_max = (1 - valid).add_(x.size_max)
    sign = torch.sign(x.size_diff)
    g_diff = _masked(valid, g_omega * sign / size_max)
    g_max = _masked(valid, -g_omega * x.omega / size_max)
    pred_wh = g_diff + g_max * (0.5 + 0.5 * sign)
    target_wh = -g_diff + g_max * (0.5 - 0.5 * sign)
    # distance cost: 2 - sum exp(gamma rho), rho = (s / c)**2
    g_rho = -g_cost * x.gamma.unsqueeze(-1) * x.exp_rho
    g_gamma = -g_cost[..., 0] * (x.rho * x.exp_rho).sum(-1)
    g_angle = g_gamma if neg_gamma else -g_gamma
    # angle cost cos(2 asin(q) - pi/2): derivative 2 (1 - 2q**2)/sqrt(1-q**2)
    g_sin = g_angle * 2 * (1 - 2 * x.sin**2) / (1 - x.sin**2).sqrt()
    # q = |s_k| / |s| for the picked axis k
    sigma = x.sigma[..., 0]
    has_offset = torch.sign(sigma)  # 1.0 where != 0 (sigma >= 0)
    sigma = (1 - has_offset).add_(sigma)
    picked = torch.stack([1 - x.pick_y, x.pick_y], -1)
    g_s = _masked(has_offset.unsqueeze(-1), g_sin.unsqueeze(-1) * (
        _masked(picked, torch.sign(x.s)) / sigma.unsqueeze(-1) -
        (x.sin / sigma**2).unsqueeze(-1) * x.s))
    g_s = g_s + g_rho * 2 * x.s / x.enclose**2
    enclose_wh = _masked(_ge_gate(x.enclose_raw, eps),
                         -g_rho * 2 * x.rho / x.enclose)
    g_inter = g_siou / union
    g_union = -g_siou * x.iou / union
    return (x.loss, ) + ov.backward(
        g_inter, g_union, need_target, pred_wh=pred_wh, target_wh=target_wh,
        enclose_wh=enclose_wh, offset=0.5 * g_s)


# double blocks: still far below mmdet's peak memory
_siou_loss_core.block_scale = 2


@_weighted_box_loss
def siou_loss(pred: Tensor, target: Tensor, eps: float = 1e-7,
              neg_gamma: bool = False, fast: bool = True,
              reduce: _Reduction = _ELEMENTWISE) -> Tensor:
    """SIoU loss ``1 - clamp(IoU - (Delta + Omega) / 2, -1, 1)``.

    With ``s = centre offset + eps`` and the enclosing size ``(c_w, c_h)``
    (floored at ``eps``):

    * angle cost ``Lambda = cos(2 arcsin(sin alpha) - pi/2)`` with
      ``sin alpha = min(|s_x|, |s_y|) / |s|`` (0 when ``s = 0``)
    * distance cost ``Delta = sum_{x,y} 1 - exp(gamma (s / c)**2)`` with
      ``gamma = 2 - Lambda`` (``Lambda - 2`` with ``neg_gamma``, the paper)
    * shape cost ``Omega = sum_{w,h} (1 - exp(-|w_p - w_t| / max(w_p,
      w_t)))**4`` (heights get ``+ eps``; equal sizes give 0, also 0/0)

    Gevorgyan, "SIoU Loss", 2022, arXiv:2205.12740.
    """
    return _run(_siou_loss_core, _plain_siou_loss, pred, target, fast, eps,
                neg_gamma, reduce=reduce)


def _plain_bounded_iou_loss(pred, target, beta, eps):
    p, t = geo.column_major(pred), geo.column_major(target).detach()
    offset = (geo.box_centre(t) - geo.box_centre(p)).abs()
    wh_p, wh_t = geo.box_wh(p), geo.box_wh(t)
    loss_xy = 1 - ((wh_t - 2 * offset) /
                   (wh_t + 2 * offset + eps)).clamp(min=0)
    loss_wh = 1 - torch.minimum(wh_t / (wh_p + eps), wh_p / (wh_t + eps))
    loss = torch.cat([loss_xy, loss_wh], dim=-1)
    return _smooth(loss, beta)


def _bounded_iou_core(pred, target, need_grad, need_target, beta, eps):
    """Bounded IoU loss (n, 4) and its four partial derivatives.

    Boxes are column-major (n, 4); the work runs on their (4, n) planes.
    The x/y terms depend on the centre, which both corners move by half;
    the w/h terms on the size (``-1`` for lo, ``+1`` for hi). So the
    Jacobian is four numbers per box, returned column-major (n, 4):
    ``(d L_x / d c_x, d L_y / d c_y, d L_w / d w, d L_h / d h)`` with the
    centre's share (1/2 per corner) folded in. Same op order as the plain
    formula, so the values are identical.
    """
    p, t = pred.t(), target.t()  # (4, n) planes
    lo_p, hi_p, lo_t, hi_t = p[:2], p[2:], t[:2], t[2:]
    # offset |c_t - c_p| and sizes, (2, n) each
    signed = (lo_t + hi_t).mul_(0.5).sub_((lo_p + hi_p).mul_(0.5))
    offset = signed.abs()
    wh_p, wh_t = hi_p - lo_p, hi_t - lo_t
    twice = offset.mul_(2)
    den = (wh_t + twice).add_(eps)
    ratio = (wh_t - twice).div_(den)
    del twice
    loss = ratio.new_empty((4, ratio.shape[1]))
    # loss_xy = 1 - clamp(ratio, 0)
    torch.sub(1, ratio.clamp(min=0), out=loss[:2])
    p_eps = wh_p + eps
    q_t = wh_t / p_eps  # w_t / (w_p + eps)
    t_eps = wh_t.add_(eps)
    q_p = wh_p.div_(t_eps)  # w_p / (w_t + eps)
    torch.sub(1, torch.minimum(q_t, q_p), out=loss[2:])
    value = _smooth(loss, beta)
    if not need_grad:
        return value.t(), None, None
    # smooth-L1's slope, min(x / beta, 1)
    slope = loss.div_(beta).clamp_(max=1.0)
    jac = slope  # reuse: (4, n)
    # x/y: dL/dc_p = -2 gate sign(d) (2 w_t + eps) / den**2 with
    # d = c_t - c_p; a corner moves c_p by half
    gate = torch.sign(ratio).add_(1).clamp_(max=1)  # clamp(min=0) gate
    g_xy = den.pow_(2).reciprocal_().mul_(gate)
    del gate, den, ratio
    g_xy.mul_(torch.sign(signed))
    # 2 w_t + eps == 2 (w_t + eps) - eps
    g_xy.mul_(t_eps.mul(2).sub_(eps)).neg_()
    jac[:2].mul_(g_xy)
    del g_xy, signed
    # w/h: minimum's tie rule shares half; d q_t/d w_p = -q_t / (w_p + eps),
    # d q_p/d w_p = 1 / (w_t + eps)
    share_t = torch.sign(q_p - q_t).mul_(0.5).add_(0.5)  # share of q_t
    g_wh = q_t.div_(p_eps).mul_(share_t)
    share_t.neg_().add_(1)
    g_wh.sub_(share_t.div_(t_eps))
    jac[2:].mul_(g_wh)
    return value.t(), jac.t(), None


class _BoundedIoUJacobian(torch.autograd.Function):
    """Bounded IoU loss (n, 4) with the four partials of :func:`
    _bounded_iou_core` saved; backward mixes them per box (the target
    gets no gradient, as in MMDetection)."""

    @staticmethod
    def forward(ctx, pred, target, beta, eps):
        loss, jac, _ = _run_chunked(_bounded_iou_core, pred, target, True,
                                    False, beta, eps)
        ctx.save_for_backward(jac)
        return loss

    @staticmethod
    def backward(ctx, grad):
        jac, = ctx.saved_tensors
        n = jac.shape[0]
        planes = jac.t()
        grad = grad.expand(n, 4)
        out = jac.new_empty((n, 4))
        for start in range(0, n, _CHUNK):
            stop = min(start + _CHUNK, n)
            g = grad[start:stop]
            if g.is_contiguous() and g.shape[0] >= 1024:
                g = geo.column_major(g)
            scaled = planes[:, start:stop] * g.t()
            centre, size = scaled[:2], scaled[2:]
            scaled = torch.cat([centre - size, centre + size])
            out[start:stop] = geo.row_major(scaled.t())
        return out, None, None, None


@weighted_loss
def bounded_iou_loss(pred: Tensor, target: Tensor, beta: float = 0.2,
                     eps: float = 1e-3, fast: bool = True) -> Tensor:
    """Bounded IoU loss, element-wise per coordinate (shape (..., 4)).

    The target is a constant (no gradient flows into it). With the centre
    offset ``d`` and sizes ``w_p``, ``w_t`` (and the same for y/h):

    * ``1 - max(0, (w_t - 2|d_x|) / (w_t + 2|d_x| + eps))`` for x, y
    * ``1 - min(w_t / (w_p + eps), w_p / (w_t + eps))`` for w, h

    each passed through smooth L1 with ``beta``. Tychsen-Smith & Petersson,
    "Improving Object Localization with Fitness NMS and Bounded IoU Loss",
    CVPR 2018, arXiv:1711.00164.
    ``fast`` uses the hand-written backward (:class:`_BoundedIoUJacobian`).
    """
    p, t = geo.upcast(pred, target)
    p, t = p.reshape(-1, 4), t.reshape(-1, 4).detach()
    if not fast:
        loss = _plain_bounded_iou_loss(p, t, beta, eps)
    elif torch.is_grad_enabled() and p.requires_grad:
        loss = _BoundedIoUJacobian.apply(p, t, beta, eps)
    else:  # no backward will come: skip the Jacobian
        loss = _run_chunked(_bounded_iou_core, p, t, False, False, beta,
                            eps)[0]
    return _unflat(loss, pred)


# ---------------------------------------------------------------------------
# Beyond MMDetection
# ---------------------------------------------------------------------------
def _variant_metric(pred, target, mode, eps, fast):
    """``(IoU or None, loss)`` of an IoU variant (``L_mode`` below)."""
    if mode == 'siou':
        core_args = (_siou_loss_core, _plain_siou_loss, eps, False)
    elif mode == 'giou':
        core_args = (_giou_loss_core, _plain_giou_loss, eps)
    elif mode in ('diou', 'ciou'):
        core_args = (_diou_loss_core, _plain_diou_loss, eps, mode == 'ciou')
    else:
        iou = geo.aligned_iou(pred, target, eps)
        return iou, 1 - iou
    core, plain, *args = core_args
    if fast:
        return None, _fast(core, pred, target, *args)
    return None, plain(pred, target, *args)


@weighted_loss
def variant_iou_loss(pred: Tensor, target: Tensor, mode: str = 'giou',
                     eps: float = 1e-7, inner_ratio: Optional[float] = None,
                     focaler: Optional[Sequence[float]] = None,
                     fast: bool = True) -> Tensor:
    """Any IoU variant, optionally with the Inner-IoU / Focaler-IoU terms.

    ``L = L_mode + IoU - IoU'``, where ``L_mode`` is the ``mode`` loss
    (``1 - IoU + penalty`` of :func:`iou_terms`, or :func:`siou_loss` for
    ``'siou'``) and ``IoU'`` replaces the IoU by

    * Inner-IoU (``inner_ratio = r``): the IoU of the auxiliary boxes
      scaled by ``r`` about their centres (``r < 1`` helps high-IoU pairs,
      ``r > 1`` low-IoU ones). Zhang, Xu & Zhang, "Inner-IoU: More Effective
      Intersection over Union Loss with Auxiliary Bounding Box", 2023,
      arXiv:2311.02877.
    * Focaler-IoU (``focaler = (d, u)``): :func:`focaler_iou` of it.

    With neither option it is ``L_mode`` itself (``1 - IoU`` for ``'iou'``).
    Shapes: boxes (..., 4) -> loss (...).
    """
    p, t = geo.upcast(pred, target)
    iou, loss = _variant_metric(p, t, mode, eps, fast)
    if inner_ratio is not None or focaler is not None:
        if iou is None:
            iou = geo.aligned_iou(p, t, eps, floor=mode == 'giou')
        modified = iou
        if inner_ratio is not None:
            modified = geo.aligned_iou(geo.scale_boxes(p, inner_ratio),
                                       geo.scale_boxes(t, inner_ratio), eps)
        if focaler is not None:
            modified = focaler_iou(modified, *focaler)
        loss = loss + iou - modified
    return geo.restore_dtype(loss, pred)


@weighted_loss
def alpha_iou_loss(pred: Tensor, target: Tensor, alpha: float = 3.0,
                   mode: str = 'iou', eps: float = 1e-7) -> Tensor:
    """Alpha-IoU: the power generalisation of an IoU loss.

    ``L = 1 - IoU**a + P**a`` where the penalty term is, per ``mode``:
    none (``'iou'``), ``((C - U) / C)**a`` (``'giou'``),
    ``(rho**2 / c**2)**a`` (``'diou'``), and for ``'ciou'``
    ``(rho**2 / c**2)**a + (beta v)**a``. ``a = 1`` recovers the plain
    losses. He et al., "Alpha-IoU: A Family of Power Intersection over Union
    Losses for Bounding Box Regression", NeurIPS 2021, arXiv:2110.13675.

    Shapes: boxes (..., 4) -> loss (...).
    """
    p, t = geo.upcast(pred, target)
    if mode == 'ciou':
        iou, penalty = _diou_terms(p, t, eps)
        v = geo.aspect_consistency(p, t, eps)
        penalty = penalty.pow(alpha) + (_ciou_weight(iou, v) * v).pow(alpha)
    else:
        iou, penalty = iou_terms(p, t, mode, eps)
        # clamp: GIoU's penalty can round to a hair below 0 (NaN under pow)
        penalty = penalty.clamp(min=0).pow(alpha)
    loss = 1 - iou.clamp(min=0).pow(alpha) + penalty
    return geo.restore_dtype(loss, pred)


def wise_iou_loss(pred: Tensor, target: Tensor,
                  running_mean: Optional[Tensor] = None,
                  version: str = 'v3', alpha: float = 1.9, delta: float = 3.0,
                  gamma: float = 0.5, eps: float = 1e-7) -> Tensor:
    """Wise-IoU, element-wise (shape (...)).

    ``L_v1 = R * L_IoU`` with ``L_IoU = 1 - IoU`` and the distance attention
    ``R = exp(rho**2 / (W_g**2 + H_g**2)*)``; ``*`` marks a detached term,
    ``W_g, H_g`` the enclosing box's size. With the outlier degree
    ``beta = L_IoU* / mean(L_IoU)`` (``mean`` a running mean):

    * ``'v2'`` (monotonic): ``L = (L_IoU* / mean)**gamma * L_v1``
    * ``'v3'`` (non-monotonic): ``L = beta / (delta alpha**(beta - delta))
      * L_v1``: ordinary anchors (``beta`` near ``delta``) weigh most.

    Tong et al., "Wise-IoU: Bounding Box Regression Loss with Dynamic
    Focusing Mechanism", 2023, arXiv:2301.10051.

    Args:
        running_mean (Tensor, optional): scalar running mean of ``L_IoU``
            (required by v2/v3; the module keeps it as a buffer).
    """
    p, t = geo.upcast(pred, target)
    iou_loss_ = 1 - geo.aligned_iou(p, t, eps)
    with torch.no_grad():
        size = geo.enclosing_wh(p, t)
        attention = torch.exp(geo.centre_distance_sq(p, t) /
                              ((size**2).sum(-1) + eps))
    loss = attention * iou_loss_
    if version != 'v1':
        with torch.no_grad():
            beta = iou_loss_ / running_mean.clamp(min=eps)
            if version == 'v2':
                focus = beta.pow(gamma)
            else:
                focus = beta / (delta * torch.pow(alpha, beta - delta))
        loss = focus * loss
    return geo.restore_dtype(loss, pred)


def _img_size(img_size, like: Tensor) -> Tensor:
    """``(w, h)`` as a tensor broadcasting against (..., 2)."""
    if isinstance(img_size, Tensor):
        return img_size.to(like.dtype)
    return like.new_tensor(tuple(img_size))


@weighted_loss
def mpdiou_loss(pred: Tensor, target: Tensor,
                img_size: Union[Sequence[float], Tensor] = (640, 640),
                eps: float = 1e-7) -> Tensor:
    """MPDIoU loss ``1 - IoU + (d_1**2 + d_2**2) / (w**2 + h**2)``.

    ``d_1``/``d_2`` are the distances between the top-left and between the
    bottom-right corners, ``(w, h)`` the input image size (``img_size``, a
    pair or a tensor (..., 2) per box). Ma & Xu, "MPDIoU: A Loss for
    Efficient and Accurate Bounding Box Regression", 2023, arXiv:2307.07662.
    """
    p, t = geo.upcast(pred, target)
    iou = geo.aligned_iou(p, t, eps)
    diag = (_img_size(img_size, p)**2).sum(-1)
    corner = ((p - t)**2).view(*p.shape[:-1], 2, 2).sum(-1).sum(-1)
    return geo.restore_dtype(1 - iou + corner / diag, pred)


@weighted_loss
def focal_eiou_loss(pred: Tensor, target: Tensor, gamma: float = 0.5,
                    eps: float = 1e-7) -> Tensor:
    """Focal-EIoU ``IoU**gamma * L_EIoU`` (the efficient IoU, not mmdet's
    EIoU), element-wise.

    ``L_EIoU = 1 - IoU + rho**2 / c**2 + (w_p - w_t)**2 / C_w**2
    + (h_p - h_t)**2 / C_h**2`` with the enclosing size ``(C_w, C_h)``; the
    focal factor uses the detached IoU. Zhang et al., "Focal and Efficient
    IOU Loss for Accurate Bounding Box Regression", Neurocomputing 2022,
    arXiv:2101.08158.
    """
    p, t = geo.upcast(pred, target)
    iou, penalty = _diou_terms(p, t, eps)
    size = geo.enclosing_wh(p, t)
    wh = ((geo.box_wh(p) - geo.box_wh(t))**2 / (size**2 + eps)).sum(-1)
    loss = 1 - iou + penalty + wh
    return geo.restore_dtype(iou.detach().clamp(min=0).pow(gamma) * loss,
                             pred)


# ---------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------
class IoUFamilyLoss(BaseLoss):
    """Shared base of every IoU-family module.

    Subclasses name their pure function in ``loss_function`` and its extra
    arguments in :meth:`loss_kwargs`; this class validates the inputs,
    maps MMDetection's (n, 4) weights to per-box weights and reduces.

    Forward args (as MMDetection's):
        pred (Tensor): predicted boxes (..., 4).
        target (Tensor): target boxes (..., 4).
        weight (Tensor, optional): per-box weight (...), or (..., 4) which
            is averaged over the last dimension.
        avg_factor (float | Tensor, optional): denominator of the mean.
        reduction_override (str, optional): ``'none'``, ``'mean'``, ``'sum'``.
    """

    loss_function = None
    #: per-coordinate losses (BoundedIoU) keep (..., 4) weights as they are
    elementwise_coords = False

    def __init__(self, eps: float = 1e-6, reduction: str = 'mean',
                 loss_weight: float = 1.0):
        super().__init__(reduction=reduction, loss_weight=loss_weight)
        self.eps = check_positive(self.loss_name, 'eps', eps, allow_zero=True)

    def loss_kwargs(self) -> dict:
        return dict(eps=self.eps)

    def check_inputs(self, pred: Tensor, target: Tensor,
                     weight: Optional[Tensor]) -> Optional[Tensor]:
        """Validate boxes and weight; return the weight in the loss shape."""
        name = self.loss_name
        check_box_shape(name, pred, target)
        for arg, value in (('pred', pred), ('target', target)):
            if not value.dtype.is_floating_point:
                raise TypeError(f'{name}: {arg} must be a floating point '
                                f'tensor, but has dtype {value.dtype}')
        if weight is None:
            return None
        check_tensor(name, 'weight', weight)
        if self.elementwise_coords:
            if weight.dim() == pred.dim() - 1:
                weight = weight.unsqueeze(-1)
            check_weight_shape(name, weight, pred.shape)
            return weight
        if weight.shape == pred.shape and pred.dim() > 1:
            # MMDetection heads pass (n, 4) box weights: average them
            weight = weight.mean(-1)
        check_weight_shape(name, weight, pred.shape[:-1])
        return weight

    def forward(self, pred: Tensor, target: Tensor,
                weight: Optional[Tensor] = None,
                avg_factor: Optional[Union[float, Tensor]] = None,
                reduction_override: Optional[str] = None,
                **kwargs) -> Tensor:
        reduction = self.resolve_reduction(reduction_override)
        check_avg_factor(self.loss_name, reduction, avg_factor)
        weight = self.check_inputs(pred, target, weight)
        extra = self.call_kwargs(kwargs)
        loss = type(self).loss_function(
            pred, target, weight, reduction=reduction, avg_factor=avg_factor,
            **self.loss_kwargs(), **extra)
        return self.apply_loss_weight(loss)

    def call_kwargs(self, kwargs: dict) -> dict:
        """Per-call keyword arguments; the mmdet twins take none."""
        if kwargs:
            raise TypeError(f'{self.loss_name}: unexpected keyword '
                            f'argument(s) {sorted(kwargs)}')
        return {}

    def extra_repr(self) -> str:
        args = ', '.join(f'{k}={v!r}' for k, v in self.loss_kwargs().items())
        return f'{args}, {super().extra_repr()}'


@MODELS.register_module()
class IoULoss(IoUFamilyLoss):
    """IoU loss (UnitBox): ``-log IoU``, ``1 - IoU`` or ``1 - IoU**2``.

    Args:
        linear (bool): deprecated; ``True`` means ``mode='linear'``.
        eps (float): lower clamp of the IoU.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): factor on the loss.
        mode (str): ``'linear'``, ``'square'`` or ``'log'``.

    Paper: Yu et al., "UnitBox: An Advanced Object Detection Network", ACM MM 2016, https://arxiv.org/abs/1608.01471
    """

    loss_function = staticmethod(iou_loss)

    def __init__(self, linear: bool = False, eps: float = 1e-6,
                 reduction: str = 'mean', loss_weight: float = 1.0,
                 mode: str = 'log'):
        super().__init__(eps=eps, reduction=reduction,
                         loss_weight=loss_weight)
        if mode not in SCALE_MODES:
            raise ValueError(f'IoULoss: mode must be one of {SCALE_MODES}, '
                             f'but got {mode!r}')
        if linear:
            mode = 'linear'
            warnings.warn("IoULoss: linear=True is deprecated, use "
                          "mode='linear'", DeprecationWarning)
        self.linear = linear
        self.mode = mode

    def loss_kwargs(self) -> dict:
        return dict(mode=self.mode, eps=self.eps)


@MODELS.register_module()
class GIoULoss(IoUFamilyLoss):
    """GIoU loss ``1 - GIoU`` (see :func:`giou_loss`).

    Paper: Rezatofighi et al., "Generalized Intersection over Union", CVPR 2019, https://arxiv.org/abs/1902.09630
    """

    loss_function = staticmethod(giou_loss)


@MODELS.register_module()
class DIoULoss(IoUFamilyLoss):
    """DIoU loss ``1 - DIoU`` (see :func:`diou_loss`).

    Paper: Zheng et al., "Distance-IoU Loss", AAAI 2020, https://arxiv.org/abs/1911.08287
    """

    loss_function = staticmethod(diou_loss)


@MODELS.register_module()
class CIoULoss(IoUFamilyLoss):
    """CIoU loss ``1 - CIoU`` (see :func:`ciou_loss`).

    Paper: Zheng et al., "Enhancing Geometric Factors in Model Learning and Inference for Object Detection and Instance Segmentation", TCYB 2021, https://arxiv.org/abs/2005.03572
    """

    loss_function = staticmethod(ciou_loss)


@MODELS.register_module()
class EIoULoss(IoUFamilyLoss):
    """MMDetection's (libfacedetection's) extended IoU loss, smoothed.

    Args:
        eps, reduction, loss_weight: as :class:`IoUFamilyLoss`.
        smooth_point (float): where the quadratic turns linear (> 0).

    Paper: Peng and Yu, "A Systematic IoU-Related Method: Beyond Simplified Regression for Better Localization", TIP 2021, https://ieeexplore.ieee.org/document/9429909
    """

    loss_function = staticmethod(eiou_loss)

    def __init__(self, eps: float = 1e-6, reduction: str = 'mean',
                 loss_weight: float = 1.0, smooth_point: float = 0.1):
        super().__init__(eps=eps, reduction=reduction,
                         loss_weight=loss_weight)
        self.smooth_point = check_positive(self.loss_name, 'smooth_point',
                                           smooth_point)

    def loss_kwargs(self) -> dict:
        return dict(smooth_point=self.smooth_point, eps=self.eps)


@MODELS.register_module()
class SIoULoss(IoUFamilyLoss):
    """SIoU loss (see :func:`siou_loss`).

    Args:
        eps, reduction, loss_weight: as :class:`IoUFamilyLoss`.
        neg_gamma (bool): ``gamma = Lambda - 2`` as in the paper.

    Paper: Gevorgyan, "SIoU Loss: More Powerful Learning for Bounding Box Regression", 2022, https://arxiv.org/abs/2205.12740
    """

    loss_function = staticmethod(siou_loss)

    def __init__(self, eps: float = 1e-6, reduction: str = 'mean',
                 loss_weight: float = 1.0, neg_gamma: bool = False):
        super().__init__(eps=eps, reduction=reduction,
                         loss_weight=loss_weight)
        if not isinstance(neg_gamma, bool):
            raise TypeError(f'SIoULoss: neg_gamma must be a bool, but got '
                            f'{neg_gamma!r}')
        self.neg_gamma = neg_gamma

    def loss_kwargs(self) -> dict:
        return dict(eps=self.eps, neg_gamma=self.neg_gamma)


@MODELS.register_module()
class BoundedIoULoss(IoUFamilyLoss):
    """Bounded IoU loss (see :func:`bounded_iou_loss`), per coordinate.

    A per-box weight (...) is broadcast over the four coordinates.

    Args:
        beta (float): smooth-L1 threshold (> 0).
        eps (float): stabiliser of the ratios.
        reduction, loss_weight: as :class:`IoUFamilyLoss`.

    Paper: Tychsen-Smith and Petersson, "Improving Object Localization with Fitness NMS and Bounded IoU Loss", CVPR 2018, https://arxiv.org/abs/1711.00164
    """

    loss_function = staticmethod(bounded_iou_loss)
    elementwise_coords = True

    def __init__(self, beta: float = 0.2, eps: float = 1e-3,
                 reduction: str = 'mean', loss_weight: float = 1.0):
        super().__init__(eps=eps, reduction=reduction,
                         loss_weight=loss_weight)
        self.beta = check_positive(self.loss_name, 'beta', beta)

    def loss_kwargs(self) -> dict:
        return dict(beta=self.beta, eps=self.eps)


def _check_mode(name: str, mode: str, modes=IOU_MODES) -> str:
    if mode not in modes:
        raise ValueError(f'{name}: mode must be one of {modes}, but got '
                         f'{mode!r}')
    return mode


def _check_focaler(name: str, focaler):
    if focaler is None:
        return None
    if not isinstance(focaler, (tuple, list)) or len(focaler) != 2:
        raise ValueError(f'{name}: focaler must be a pair (d, u), but got '
                         f'{focaler!r}')
    low = check_in_range(name, 'focaler[0]', focaler[0], 0, 1)
    high = check_in_range(name, 'focaler[1]', focaler[1], 0, 1,
                          high_inclusive=True)
    if not low < high:
        raise ValueError(f'{name}: focaler must have d < u, but got '
                         f'{focaler!r}')
    return (float(low), float(high))


@MODELS.register_module()
class VariantIoULoss(IoUFamilyLoss):
    """Any IoU variant with optional Inner-IoU and Focaler-IoU terms.

    See :func:`variant_iou_loss`. E.g. Inner-CIoU:
    ``dict(type='mmloss.VariantIoULoss', mode='ciou', inner_ratio=0.8)``;
    Focaler-GIoU: ``mode='giou', focaler=(0.0, 0.95)``.

    Args:
        mode (str): ``'iou'``, ``'giou'``, ``'diou'``, ``'ciou'`` or
            ``'siou'``.
        inner_ratio (float, optional): Inner-IoU's auxiliary box scale (> 0).
        focaler (tuple[float, float], optional): Focaler-IoU's ``(d, u)``.
        eps, reduction, loss_weight: as :class:`IoUFamilyLoss`.

    Paper: Zhang, Xu and Zhang, "Inner-IoU: More Effective Intersection over Union Loss with Auxiliary Bounding Box", 2023, https://arxiv.org/abs/2311.02877
    Paper: Zhang and Zhang, "Focaler-IoU: More Focused Intersection over Union Loss", 2024, https://arxiv.org/abs/2401.10525
    """

    loss_function = staticmethod(variant_iou_loss)

    def __init__(self, mode: str = 'giou',
                 inner_ratio: Optional[float] = None,
                 focaler: Optional[Sequence[float]] = None,
                 eps: float = 1e-7, reduction: str = 'mean',
                 loss_weight: float = 1.0):
        super().__init__(eps=eps, reduction=reduction,
                         loss_weight=loss_weight)
        self.mode = _check_mode(self.loss_name, mode, VARIANT_MODES)
        self.inner_ratio = None if inner_ratio is None else check_positive(
            self.loss_name, 'inner_ratio', inner_ratio)
        self.focaler = _check_focaler(self.loss_name, focaler)

    def loss_kwargs(self) -> dict:
        return dict(mode=self.mode, inner_ratio=self.inner_ratio,
                    focaler=self.focaler, eps=self.eps)


@MODELS.register_module()
class AlphaIoULoss(IoUFamilyLoss):
    """Alpha-IoU loss (see :func:`alpha_iou_loss`).

    Args:
        alpha (float): the power (> 0; the paper recommends 3).
        mode (str): ``'iou'``, ``'giou'``, ``'diou'`` or ``'ciou'``.
        eps, reduction, loss_weight: as :class:`IoUFamilyLoss`.

    Paper: He et al., "Alpha-IoU: A Family of Power Intersection over Union Losses for Bounding Box Regression", NeurIPS 2021, https://arxiv.org/abs/2110.13675
    """

    loss_function = staticmethod(alpha_iou_loss)

    def __init__(self, alpha: float = 3.0, mode: str = 'iou',
                 eps: float = 1e-7, reduction: str = 'mean',
                 loss_weight: float = 1.0):
        super().__init__(eps=eps, reduction=reduction,
                         loss_weight=loss_weight)
        self.alpha = check_positive(self.loss_name, 'alpha', alpha)
        self.mode = _check_mode(self.loss_name, mode)

    def loss_kwargs(self) -> dict:
        return dict(alpha=self.alpha, mode=self.mode, eps=self.eps)


@MODELS.register_module()
class MPDIoULoss(IoUFamilyLoss):
    """MPDIoU loss (see :func:`mpdiou_loss`).

    Args:
        img_size (tuple[float, float]): input image ``(width, height)``;
            ``forward(..., img_size=...)`` overrides it per call (a pair or
            a per-box tensor (..., 2)).
        eps, reduction, loss_weight: as :class:`IoUFamilyLoss`.

    Paper: Ma and Xu, "MPDIoU: A Loss for Efficient and Accurate Bounding Box Regression", 2023, https://arxiv.org/abs/2307.07662
    """

    loss_function = staticmethod(mpdiou_loss)

    def __init__(self, img_size: Sequence[float] = (640, 640),
                 eps: float = 1e-7, reduction: str = 'mean',
                 loss_weight: float = 1.0):
        super().__init__(eps=eps, reduction=reduction,
                         loss_weight=loss_weight)
        if not isinstance(img_size, (tuple, list)) or len(img_size) != 2:
            raise ValueError(f'MPDIoULoss: img_size must be a pair (width, '
                             f'height), but got {img_size!r}')
        self.img_size = tuple(
            check_positive(self.loss_name, 'img_size', float(s))
            for s in img_size)

    def loss_kwargs(self) -> dict:
        return dict(eps=self.eps)

    def call_kwargs(self, kwargs: dict) -> dict:
        img_size = kwargs.pop('img_size', None)
        super().call_kwargs(kwargs)
        if img_size is None:
            img_size = self.img_size
        elif isinstance(img_size, Tensor):
            if img_size.shape[-1:] != (2, ):
                raise ValueError(f'MPDIoULoss: img_size must have shape '
                                 f'(..., 2), but has shape '
                                 f'{tuple(img_size.shape)}')
        elif not isinstance(img_size, (tuple, list)) or len(img_size) != 2:
            raise ValueError(f'MPDIoULoss: img_size must be a pair (width, '
                             f'height), but got {img_size!r}')
        return dict(img_size=img_size)


@MODELS.register_module()
class FocalEIoULoss(IoUFamilyLoss):
    """Focal-EIoU loss (see :func:`focal_eiou_loss`); not mmdet's EIoU.

    Args:
        gamma (float): power of the IoU focal factor (>= 0).
        eps, reduction, loss_weight: as :class:`IoUFamilyLoss`.

    Paper: Zhang et al., "Focal and Efficient IOU Loss for Accurate Bounding Box Regression", Neurocomputing 2022, https://arxiv.org/abs/2101.08158
    """

    loss_function = staticmethod(focal_eiou_loss)

    def __init__(self, gamma: float = 0.5, eps: float = 1e-7,
                 reduction: str = 'mean', loss_weight: float = 1.0):
        super().__init__(eps=eps, reduction=reduction,
                         loss_weight=loss_weight)
        self.gamma = check_positive(self.loss_name, 'gamma', gamma,
                                    allow_zero=True)

    def loss_kwargs(self) -> dict:
        return dict(gamma=self.gamma, eps=self.eps)


WISE_VERSIONS = ('v1', 'v2', 'v3')


@MODELS.register_module()
class WiseIoULoss(IoUFamilyLoss):
    """Wise-IoU loss (see :func:`wise_iou_loss`).

    The running mean of ``1 - IoU`` is the buffer ``running_mean`` (saved in
    checkpoints), updated in training mode after each call as
    ``mean <- (1 - momentum) mean + momentum * batch mean`` (no host sync).

    Args:
        version (str): ``'v1'``, ``'v2'`` or ``'v3'``.
        alpha, delta (float): v3's focusing parameters (paper: 1.9, 3).
        gamma (float): v2's power (paper: 0.5).
        momentum (float): running-mean momentum in (0, 1] (paper: 1e-2).
        eps, reduction, loss_weight: as :class:`IoUFamilyLoss`.

    Paper: Tong et al., "Wise-IoU: Bounding Box Regression Loss with Dynamic Focusing Mechanism", 2023, https://arxiv.org/abs/2301.10051
    """

    def __init__(self, version: str = 'v3', alpha: float = 1.9,
                 delta: float = 3.0, gamma: float = 0.5,
                 momentum: float = 1e-2, eps: float = 1e-7,
                 reduction: str = 'mean', loss_weight: float = 1.0):
        super().__init__(eps=eps, reduction=reduction,
                         loss_weight=loss_weight)
        if version not in WISE_VERSIONS:
            raise ValueError(f'WiseIoULoss: version must be one of '
                             f'{WISE_VERSIONS}, but got {version!r}')
        self.version = version
        self.alpha = check_positive(self.loss_name, 'alpha', alpha)
        self.delta = check_positive(self.loss_name, 'delta', delta)
        self.gamma = check_positive(self.loss_name, 'gamma', gamma)
        self.momentum = check_in_range(self.loss_name, 'momentum', momentum,
                                       0, 1, high_inclusive=True)
        if momentum == 0:
            raise ValueError('WiseIoULoss: momentum must lie in (0, 1], but '
                             'got 0')
        self.register_buffer('running_mean', torch.ones(()))

    def loss_kwargs(self) -> dict:
        return dict(version=self.version, alpha=self.alpha, delta=self.delta,
                    gamma=self.gamma, eps=self.eps)

    def forward(self, pred: Tensor, target: Tensor,
                weight: Optional[Tensor] = None,
                avg_factor: Optional[Union[float, Tensor]] = None,
                reduction_override: Optional[str] = None,
                **kwargs) -> Tensor:
        reduction = self.resolve_reduction(reduction_override)
        check_avg_factor(self.loss_name, reduction, avg_factor)
        weight = self.check_inputs(pred, target, weight)
        self.call_kwargs(kwargs)
        loss = wise_iou_loss(pred, target, self.running_mean,
                             **self.loss_kwargs())
        if self.training and loss.numel() > 0:
            self._update_mean(pred, target)
        return self.apply_loss_weight(
            weight_reduce_loss(loss, weight, reduction, avg_factor))

    @torch.no_grad()
    def _update_mean(self, pred: Tensor, target: Tensor) -> None:
        p, t = geo.upcast(pred.detach(), target.detach())
        # NaN boxes propagate into the loss but must not poison the
        # statistic for every later batch: average the finite ones, and
        # keep the old mean if none is (all without a host sync)
        batch = torch.nanmean(1 - geo.aligned_iou(p, t, self.eps))
        batch = batch.to(self.running_mean.dtype)
        updated = torch.lerp(self.running_mean, batch, self.momentum)
        self.running_mean.copy_(torch.where(torch.isfinite(updated), updated,
                                            self.running_mean))
