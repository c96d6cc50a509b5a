"""The IoU family's public loss functions: tensors in, tensors out.

Every function checks its inputs on entry (shapes and dtypes only; errors
name the loss), then runs its body with autocast off on inputs upcast to
float32 at least, and casts the element-wise loss back to ``pred``'s dtype
before weighting and reducing it with :class:`mmloss.reduction.Reduction`
(MMDetection's rules). The twins take MMDetection's arguments in its order,
``(pred, target, weight=None, reduction='mean', avg_factor=None)``, then
their own options as keywords.

Which path runs is the dispatcher's decision
(:func:`mmloss.engine.dispatch.use_fast`): the plain formula
(:mod:`.formulas`) or the row-wise engine (:mod:`mmloss.engine.rowwise`) on
a hand-derived core (:mod:`.cores`), which fuses a ``'mean'``/``'sum'``
with a constant weight of the loss's shape into the kernel. ``fast=False``
forces the plain formula for one call.
"""
import warnings
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ... import geometry as geo
from ...checks import (check_box_shape, check_float, check_tensor,
                       check_weight_shape)
from ...engine import dispatch, rowwise
from ...errors import LossValueError
from ...precision import restore_dtype, restore_loss, upcast
from ...reduction import Reduction
from ...typing_utils import AvgFactor
from . import cores
from . import formulas as F

__all__ = [
    'iou_terms', 'focaler_iou', 'iou_loss', 'giou_loss', 'diou_loss',
    'ciou_loss', 'eiou_loss', 'siou_loss', 'bounded_iou_loss',
    'variant_iou_loss', 'alpha_iou_loss', 'wise_iou_loss', 'mpdiou_loss',
    'focal_eiou_loss'
]


# ---------------------------------------------------------------------------
# Entry checks and the path decision
# ---------------------------------------------------------------------------
def check_boxes(name: str, pred: Tensor, target: Tensor) -> None:
    """Raise (naming ``name``) unless both are float (..., 4) tensors of
    one shape."""
    check_box_shape(name, pred, target)
    check_float(name, 'pred', pred)
    check_float(name, 'target', target)


def checked_call(name: str, pred: Tensor, target: Tensor,
                 weight: Optional[Tensor], reduction: str,
                 avg_factor: AvgFactor,
                 per_coordinate: bool = False) -> Reduction:
    """Check a weighted box loss's inputs; its :class:`Reduction`.

    ``weight`` must broadcast to the element-wise loss, (...) or, for a
    ``per_coordinate`` loss, (..., 4).
    """
    check_boxes(name, pred, target)
    check_weight_shape(name, weight,
                       pred.shape if per_coordinate else pred.shape[:-1])
    return Reduction(name, weight, reduction, avg_factor).checked()


def _fusable(reduce: Reduction, pred: Tensor, target: Tensor,
             weight_shape: Sequence[int]) -> bool:
    """Whether the fused weighted sum gives ``reduce``'s result: a backward
    will come (else the gradient is wasted work), boxes of one float32 or
    float64 dtype (half boxes are upcast and go the element-wise way), and
    what :meth:`Reduction.fusable` asks of weight and ``avg_factor``."""
    return (reduce.reduces and pred.numel() > 0 and torch.is_grad_enabled()
            and (pred.requires_grad or target.requires_grad)
            and pred.dtype in (torch.float32, torch.float64)
            and target.dtype == pred.dtype
            and target.device == pred.device
            and reduce.fusable(pred, weight_shape=weight_shape))


def _rows(boxes: Tensor) -> Tensor:
    """(..., 4) boxes as (N, 4) (``boxes`` itself when already 2-D: no
    extra autograd node)."""
    return boxes if boxes.dim() == 2 else boxes.reshape(-1, 4)


def _unflat(loss: Tensor, pred: Tensor) -> Tensor:
    """A per-row loss back to ``pred``'s leading dims."""
    return loss if pred.dim() == 2 else loss.view(pred.shape[:-1])


def _upcast(pred: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
    """:func:`mmloss.precision.upcast`, skipped for the common float32 /
    float64 pair that needs none."""
    if pred.dtype == target.dtype and pred.dtype in (torch.float32,
                                                     torch.float64):
        return pred, target
    return upcast(pred, target)


def guarded(loss: Tensor, pred: Tensor, target: Tensor,
            per_coordinate: bool = False) -> Tensor:
    """``loss`` (...), or (..., 4) ``per_coordinate``, NaN in each row
    whose boxes hold an Inf or NaN (:func:`mmloss.geometry.nonfinite_rows`),
    so no non-finite input can give a finite loss."""
    guard = geo.nonfinite_rows(pred, target)
    return loss + (guard.unsqueeze(-1) if per_coordinate else guard)


def guarded_reduction(reduce: Reduction, loss: Tensor, p: Tensor,
                      t: Tensor, pred: Tensor,
                      per_coordinate: bool = False) -> Tensor:
    """The element-wise ``loss`` of boxes ``p``, ``t`` (upcast from
    ``pred``) weighted and reduced by ``reduce``, NaN where an input is
    not finite, in ``pred``'s loss dtype (:func:`restore_loss`).

    A reduced loss gets the guard's total (one scalar added: the same NaN
    as a NaN row gives the mean or sum, weighted or not); ``'none'`` gets
    it per row (:func:`guarded`).
    """
    if reduce.reduces:
        value = reduce.apply(loss) + geo.nonfinite_rows(p, t, total=True)
    else:
        value = reduce.apply(guarded(loss, p, t, per_coordinate))
    return restore_loss(value, pred, reduce.reduces)


def _box_loss(name: str, core: rowwise.Core, plain: Callable,
              pred: Tensor, target: Tensor, reduce: Reduction, fast: bool,
              args: Tuple) -> Tensor:
    """A per-row loss by the path the dispatcher picks, then reduced."""
    return dispatch.without_autocast(pred, _box_loss_body, name, core, plain,
                                     pred, target, reduce, fast, args)


def _box_loss_body(name: str, core: rowwise.Core, plain: Callable,
                   pred: Tensor, target: Tensor, reduce: Reduction,
                   fast: bool, args: Tuple) -> Tensor:
    rows = pred.shape[:-1].numel()
    if fast and dispatch.use_fast(name, pred, target, rows=rows):
        if _fusable(reduce, pred, target, pred.shape[:-1]):
            weight = reduce.weight
            total = rowwise.weighted_sum(
                core, plain, _rows(pred), _rows(target),
                None if weight is None else weight.reshape(-1), args,
                wide=True)
            return reduce.finish(total + geo.nonfinite_rows(
                pred, target, total=True, buffer=False), rows)
        p, t = _upcast(pred, target)
        loss = _unflat(rowwise.per_row(core, plain, _rows(p), _rows(t),
                                       args, wide=True), pred)
    else:
        p, t = _upcast(pred, target)
        loss = plain(p, t, *args)
    return guarded_reduction(reduce, loss, p, t, pred)


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------
def iou_terms(pred: Tensor, target: Tensor, mode: str = 'giou',
              eps: float = 1e-7) -> Tuple[Tensor, Tensor]:
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
        pred, target (Tensor): boxes, shape (..., 4).
        mode (str): one of ``'iou'``, ``'giou'``, ``'diou'``, ``'ciou'``.
        eps (float): stabiliser, as in MMDetection.

    Returns:
        (Tensor, Tensor): IoU and penalty, each of shape (...), in
        ``pred``'s dtype (half boxes are computed in float32).
    """
    check_boxes('iou_terms', pred, target)
    with dispatch.autocast_off(pred):
        iou, penalty = F.terms(*upcast(pred, target), mode, eps)
        return restore_dtype(iou, pred), restore_dtype(penalty, pred)


def focaler_iou(iou: Tensor, low: float = 0.0, high: float = 0.95) -> Tensor:
    """Focaler-IoU's linear interval mapping of the IoU.

    ``IoU_f = clamp((IoU - d) / (u - d), 0, 1)`` with ``[d, u] = [low,
    high]``: samples with IoU below ``d`` give no gradient, above ``u`` count
    as perfect, and ``[d, u]`` is stretched to ``[0, 1]`` (Zhang & Zhang,
    "Focaler-IoU: More Focused Intersection over Union Loss", 2024,
    arXiv:2401.10525). Shape: any, kept.
    """
    check_tensor('focaler_iou', 'iou', iou)
    with dispatch.autocast_off(iou):
        return restore_dtype(F.focaler(*upcast(iou), low, high), iou)


# ---------------------------------------------------------------------------
# MMDetection twins
# ---------------------------------------------------------------------------
def iou_loss(pred: Tensor, target: Tensor, weight: Optional[Tensor] = None,
             reduction: str = 'mean', avg_factor: AvgFactor = None, *,
             linear: bool = False, mode: str = 'log', eps: float = 1e-6,
             fast: bool = True) -> Tensor:
    """IoU loss (Yu et al., "UnitBox", ACM MM 2016).

    ``IoU = max(I / max(U, 1e-6), eps)``, then ``1 - IoU`` (``'linear'``),
    ``1 - IoU**2`` (``'square'``) or ``-log IoU`` (``'log'``).

    Args:
        pred, target (Tensor): boxes (..., 4).
        weight (Tensor, optional): per-box weight, broadcast to (...).
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean.
        linear (bool): deprecated, same as ``mode='linear'``.
        mode (str): ``'linear'``, ``'square'`` or ``'log'``.
        eps (float): lower clamp of the IoU.
        fast (bool): ``False`` forces the plain formula.

    Returns:
        Tensor: shape (...) for ``'none'``, else a scalar.
    """
    reduce = checked_call('IoULoss', pred, target, weight, reduction,
                          avg_factor)
    if linear:
        mode = 'linear'
        warnings.warn('iou_loss: linear=True is deprecated, use '
                      "mode='linear'", DeprecationWarning)
    if mode not in F.SCALE_MODES:
        raise LossValueError(f'iou_loss: mode must be one of {F.SCALE_MODES}, '
                             f'but got {mode!r}')
    return _box_loss('IoULoss', cores.iou_core, F.plain_iou_loss, pred,
                     target, reduce, fast, (mode, eps))


def _overlap_loss(name: str, loss_name: str, core, plain, extra: tuple,
                  doc: str):
    """A public function of the losses that take only ``eps`` (GIoU, DIoU,
    CIoU): mmdet's signature, the entry checks, ``core`` and ``plain``
    with ``(eps, *extra)``."""

    def loss(pred: Tensor, target: Tensor, weight: Optional[Tensor] = None,
             reduction: str = 'mean', avg_factor: AvgFactor = None, *,
             eps: float = 1e-7, fast: bool = True) -> Tensor:
        reduce = checked_call(loss_name, pred, target, weight, reduction,
                              avg_factor)
        return _box_loss(loss_name, core, plain, pred, target, reduce, fast,
                         (eps, ) + extra)

    loss.__name__ = loss.__qualname__ = name
    loss.__doc__ = doc
    return loss


giou_loss = _overlap_loss(
    'giou_loss', 'GIoULoss', cores.giou_core, F.plain_giou_loss, (),
    """GIoU loss ``1 - IoU + (C - U) / C``.

    ``C`` is the area of the smallest enclosing box; union and ``C`` are
    floored at ``eps``. Arguments as :func:`iou_loss`; boxes (..., 4), the
    element-wise loss (...). Rezatofighi et al., "Generalized Intersection
    over Union", CVPR 2019, arXiv:1902.09630.
    """)

diou_loss = _overlap_loss(
    'diou_loss', 'DIoULoss', cores.diou_core, F.plain_diou_loss, (False, ),
    """DIoU loss ``1 - I/(U + eps) + rho**2 / (c**2 + eps)``.

    ``rho`` is the centre distance, ``c`` the enclosing box's diagonal.
    Arguments as :func:`iou_loss`; boxes (..., 4), the element-wise loss
    (...). Zheng et al., "Distance-IoU Loss", AAAI 2020, arXiv:1911.08287.
    """)

ciou_loss = _overlap_loss(
    'ciou_loss', 'CIoULoss', cores.diou_core, F.plain_diou_loss, (True, ),
    """CIoU loss ``1 - clamp(IoU - rho**2/c**2 - alpha v, -1, 1)``.

    ``v = 4/pi**2 (atan(w_t/(h_t+eps)) - atan(w_p/(h_p+eps)))**2`` and the
    detached ``alpha = [IoU > 0.5] v / (1 - IoU + v)`` (0 for identical
    boxes, where mmdet gets 0/0). Arguments as :func:`iou_loss`; boxes
    (..., 4), the element-wise loss (...). Zheng et al., "Enhancing
    Geometric Factors in Model Learning and Inference", TCYB 2021,
    arXiv:2005.03572.
    """)


def eiou_loss(pred: Tensor, target: Tensor, weight: Optional[Tensor] = None,
              reduction: str = 'mean', avg_factor: AvgFactor = None, *,
              smooth_point: float = 0.1, eps: float = 1e-7,
              fast: bool = True) -> Tensor:
    """Extended-IoU loss of libfacedetection, smoothed.

    ``x = 1 - I_ext / (A_p + A_t - I_ext + eps)`` with the signed extended
    intersection :func:`mmloss.geometry.extended_intersection` (negative for
    disjoint boxes), then ``0.5 x**2 / s`` for ``x < s`` and ``x - 0.5 s``
    otherwise (``s = smooth_point``). Arguments as :func:`iou_loss`; boxes
    (..., 4), the element-wise loss (...). Peng & Yu, "A Systematic
    IoU-Related Method: Beyond Simplified Regression for Better
    Localization", TIP 2021.
    """
    reduce = checked_call('EIoULoss', pred, target, weight, reduction,
                          avg_factor)
    return _box_loss('EIoULoss', cores.eiou_core, F.plain_eiou_loss, pred,
                     target, reduce, fast, (smooth_point, eps))


def siou_loss(pred: Tensor, target: Tensor, weight: Optional[Tensor] = None,
              reduction: str = 'mean', avg_factor: AvgFactor = None, *,
              eps: float = 1e-7, neg_gamma: bool = False,
              fast: bool = True) -> Tensor:
    """SIoU loss ``1 - clamp(IoU - (Delta + Omega) / 2, -1, 1)``.

    With ``s = centre offset + eps`` and the enclosing size ``(c_w, c_h)``
    (floored at ``eps``):

    * angle cost ``Lambda = cos(2 arcsin(sin alpha) - pi/2)`` with
      ``sin alpha = min(|s_x|, |s_y|) / |s|`` (0 when ``s = 0``)
    * distance cost ``Delta = sum_{x,y} 1 - exp(gamma (s / c)**2)`` with
      ``gamma = 2 - Lambda`` (``Lambda - 2`` with ``neg_gamma``, the paper)
    * shape cost ``Omega = sum_{w,h} (1 - exp(-|w_p - w_t| / max(w_p,
      w_t)))**4`` (heights get ``+ eps``; equal sizes give 0, also 0/0)

    Arguments as :func:`iou_loss`; boxes (..., 4), the element-wise loss
    (...). Gevorgyan, "SIoU Loss", 2022, arXiv:2205.12740.
    """
    reduce = checked_call('SIoULoss', pred, target, weight, reduction,
                          avg_factor)
    return _box_loss('SIoULoss', cores.siou_core, F.plain_siou_loss, pred,
                     target, reduce, fast, (eps, neg_gamma))


def bounded_iou_loss(pred: Tensor, target: Tensor,
                     weight: Optional[Tensor] = None,
                     reduction: str = 'mean', avg_factor: AvgFactor = None,
                     *, beta: float = 0.2, eps: float = 1e-3,
                     fast: bool = True) -> Tensor:
    """Bounded IoU loss, per coordinate (element-wise shape (..., 4)).

    The target is a constant (no gradient flows into it). With the centre
    offset ``d`` and sizes ``w_p``, ``w_t`` (and the same for y/h):

    * ``1 - max(0, (w_t - 2|d_x|) / (w_t + 2|d_x| + eps))`` for x, y
    * ``1 - min(w_t / (w_p + eps), w_p / (w_t + eps))`` for w, h

    each passed through smooth L1 with ``beta``. ``weight`` broadcasts to
    (..., 4). Tychsen-Smith & Petersson, "Improving Object Localization
    with Fitness NMS and Bounded IoU Loss", CVPR 2018, arXiv:1711.00164.
    """
    name = 'BoundedIoULoss'
    reduce = checked_call(name, pred, target, weight, reduction, avg_factor,
                          per_coordinate=True)
    target = target.detach()
    args = (beta, eps)
    with dispatch.autocast_off(pred):
        if fast and dispatch.use_fast(name, pred, target,
                                      rows=pred.shape[:-1].numel()):
            if _fusable(reduce, pred, target, pred.shape):
                weight = None if reduce.weight is None else \
                    reduce.weight.reshape(-1, 4)

                def reference(p, t):
                    loss = F.plain_bounded_iou_loss(p, t, *args)
                    return loss.sum() if weight is None else \
                        (loss * weight).sum()

                total = rowwise.fused_sum(
                    cores.bounded_step(*args), reference, _rows(pred),
                    _rows(target), weight, dispatch.block_rows(pred))
                return reduce.finish(total + geo.nonfinite_rows(
                    pred, target, total=True, buffer=False), pred.numel())
            p, t = _upcast(pred, target)
            # centre/size coordinates make the Jacobian element-wise
            centre_size = cores.CentreSize.apply(_rows(p))
            loss = rowwise.per_row(cores.bounded_core,
                                   F.plain_bounded_from_centre_size,
                                   centre_size, _rows(t), args)
            if pred.dim() != 2:
                loss = loss.view(pred.shape)
        else:
            p, t = _upcast(pred, target)
            loss = F.plain_bounded_iou_loss(p, t, *args)
        return guarded_reduction(reduce, loss, p, t, pred, True)


# ---------------------------------------------------------------------------
# Beyond MMDetection
# ---------------------------------------------------------------------------
_VARIANT_CORES = {
    'giou': (cores.giou_core, F.plain_giou_loss, ()),
    'diou': (cores.diou_core, F.plain_diou_loss, (False, )),
    'ciou': (cores.diou_core, F.plain_diou_loss, (True, )),
    'siou': (cores.siou_core, F.plain_siou_loss, (False, )),
}


def _variant_metric(pred: Tensor, target: Tensor, mode: str, eps: float,
                    fast: bool):
    """``(IoU or None, loss)`` of an IoU variant (``L_mode`` of
    :func:`variant_iou_loss`)."""
    if mode == 'iou':
        iou = geo.aligned_iou(pred, target, eps)
        return iou, 1 - iou
    core, plain, extra = _VARIANT_CORES[mode]
    args = (eps, ) + extra
    if not fast:
        return None, plain(pred, target, *args)
    return None, _unflat(rowwise.per_row(core, plain, _rows(pred),
                                         _rows(target), args, wide=True),
                         pred)


def variant_iou_loss(pred: Tensor, target: Tensor,
                     weight: Optional[Tensor] = None,
                     reduction: str = 'mean', avg_factor: AvgFactor = None,
                     *, mode: str = 'giou', eps: float = 1e-7,
                     inner_ratio: Optional[float] = None,
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
    Shapes: boxes (..., 4) -> element-wise loss (...); weighting and
    reduction as :func:`iou_loss`.
    """
    name = 'VariantIoULoss'
    reduce = checked_call(name, pred, target, weight, reduction, avg_factor)
    if mode not in F.VARIANT_MODES:
        raise LossValueError(f'{name}: mode must be one of {F.VARIANT_MODES}, '
                             f'but got {mode!r}')
    with dispatch.autocast_off(pred):
        fast = fast and dispatch.use_fast(name, pred, target,
                                          rows=pred.shape[:-1].numel())
        p, t = upcast(pred, target)
        iou, loss = _variant_metric(p, t, mode, eps, fast)
        if inner_ratio is not None or focaler is not None:
            if iou is None:
                iou = geo.aligned_iou(p, t, eps, floor=mode == 'giou')
            modified = iou
            if inner_ratio is not None:
                modified = geo.aligned_iou(geo.scale_boxes(p, inner_ratio),
                                           geo.scale_boxes(t, inner_ratio),
                                           eps)
            if focaler is not None:
                modified = F.focaler(modified, *focaler)
            loss = loss + iou - modified
        return guarded_reduction(reduce, loss, p, t, pred)


def alpha_iou_loss(pred: Tensor, target: Tensor,
                   weight: Optional[Tensor] = None, reduction: str = 'mean',
                   avg_factor: AvgFactor = None, *, alpha: float = 3.0,
                   mode: str = 'iou', eps: float = 1e-7) -> Tensor:
    """Alpha-IoU: the power generalisation of an IoU loss.

    ``L = 1 - IoU**a + P**a`` where the penalty term is, per ``mode``:
    none (``'iou'``), ``((C - U) / C)**a`` (``'giou'``),
    ``(rho**2 / c**2)**a`` (``'diou'``), and for ``'ciou'``
    ``(rho**2 / c**2)**a + (beta v)**a``. ``a = 1`` recovers the plain
    losses. He et al., "Alpha-IoU: A Family of Power Intersection over Union
    Losses for Bounding Box Regression", NeurIPS 2021, arXiv:2110.13675.

    Shapes: boxes (..., 4) -> element-wise loss (...); weighting and
    reduction as :func:`iou_loss`.
    """
    reduce = checked_call('AlphaIoULoss', pred, target, weight, reduction,
                          avg_factor)
    with dispatch.autocast_off(pred):
        p, t = upcast(pred, target)
        if mode == 'ciou':
            iou, penalty = F.diou_terms(p, t, eps)
            v = geo.aspect_consistency(p, t, eps)
            penalty = penalty.pow(alpha) + \
                (F.ciou_weight(iou, v) * v).pow(alpha)
        else:
            iou, penalty = F.terms(p, t, mode, eps)
            # clamp: GIoU's penalty can round to a hair below 0 (NaN under
            # pow)
            penalty = penalty.clamp(min=0).pow(alpha)
        loss = 1 - iou.clamp(min=0).pow(alpha) + penalty
        return guarded_reduction(reduce, loss, p, t, pred)


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

    For boxes the exponent of ``R`` is at most 1 and ``L_IoU`` lies in
    ``[0, 1]``; both are clamped there, which changes nothing for boxes
    and keeps the loss finite on inverted ones.

    Tong et al., "Wise-IoU: Bounding Box Regression Loss with Dynamic
    Focusing Mechanism", 2023, arXiv:2301.10051.

    Args:
        running_mean (Tensor, optional): scalar running mean of ``L_IoU``
            (required by v2/v3; the module keeps it as a buffer).
    """
    name = 'WiseIoULoss'
    check_boxes(name, pred, target)
    if version != 'v1':
        check_tensor(name, 'running_mean', running_mean)
    with dispatch.autocast_off(pred):
        p, t = upcast(pred, target)
        iou_loss_ = 1 - geo.aligned_iou(p, t, eps)
        with torch.no_grad():
            size = geo.enclosing_wh(p, t)
            # rho**2 <= W_g**2 + H_g**2 for boxes (both centres lie in the
            # enclosing box): the cap at 1 only bounds inverted boxes,
            # whose "enclosing box" may be a point far from the centres
            attention = torch.exp((geo.centre_distance_sq(p, t) /
                                   ((size**2).sum(-1) + eps)).clamp(max=1))
        loss = attention * iou_loss_
        if version != 'v1':
            with torch.no_grad():
                # 1 - IoU lies in [0, 1] for boxes; the clamp keeps the
                # focus finite for inverted ones (IoU < 0 or > 1)
                beta = iou_loss_.clamp(min=0, max=1) / \
                    running_mean.clamp(min=eps)
                if version == 'v2':
                    focus = beta.pow(gamma)
                else:
                    focus = beta / (delta * torch.pow(alpha, beta - delta))
            loss = focus * loss
        return restore_dtype(guarded(loss, p, t), pred)


def _img_size(img_size, like: Tensor) -> Tensor:
    """``(w, h)`` as a tensor broadcasting against (..., 2)."""
    if isinstance(img_size, Tensor):
        return img_size.to(like.dtype)
    return like.new_tensor(tuple(img_size))


def mpdiou_loss(pred: Tensor, target: Tensor,
                weight: Optional[Tensor] = None, reduction: str = 'mean',
                avg_factor: AvgFactor = None, *,
                img_size: Union[Sequence[float], Tensor] = (640, 640),
                eps: float = 1e-7) -> Tensor:
    """MPDIoU loss ``1 - IoU + (d_1**2 + d_2**2) / (w**2 + h**2)``.

    ``d_1``/``d_2`` are the distances between the top-left and between the
    bottom-right corners, ``(w, h)`` the input image size (``img_size``, a
    pair or a tensor (..., 2) per box). Shapes: boxes (..., 4) ->
    element-wise loss (...); weighting and reduction as :func:`iou_loss`.
    Ma & Xu, "MPDIoU: A Loss for Efficient and Accurate Bounding Box
    Regression", 2023, arXiv:2307.07662.
    """
    reduce = checked_call('MPDIoULoss', pred, target, weight, reduction,
                          avg_factor)
    with dispatch.autocast_off(pred):
        p, t = upcast(pred, target)
        iou = geo.aligned_iou(p, t, eps)
        diag = (_img_size(img_size, p)**2).sum(-1)
        corner = ((p - t)**2).view(*p.shape[:-1], 2, 2).sum(-1).sum(-1)
        loss = 1 - iou + corner / diag
        return guarded_reduction(reduce, loss, p, t, pred)


def focal_eiou_loss(pred: Tensor, target: Tensor,
                    weight: Optional[Tensor] = None, reduction: str = 'mean',
                    avg_factor: AvgFactor = None, *, gamma: float = 0.5,
                    eps: float = 1e-7) -> Tensor:
    """Focal-EIoU ``IoU**gamma * L_EIoU`` (the efficient IoU, not mmdet's
    EIoU).

    ``L_EIoU = 1 - IoU + rho**2 / c**2 + (w_p - w_t)**2 / C_w**2
    + (h_p - h_t)**2 / C_h**2`` with the enclosing size ``(C_w, C_h)``; the
    focal factor uses the detached IoU. Shapes: boxes (..., 4) ->
    element-wise loss (...); weighting and reduction as :func:`iou_loss`.
    Zhang et al., "Focal and Efficient IOU Loss for Accurate Bounding Box
    Regression", Neurocomputing 2022, arXiv:2101.08158.
    """
    reduce = checked_call('FocalEIoULoss', pred, target, weight, reduction,
                          avg_factor)
    with dispatch.autocast_off(pred):
        p, t = upcast(pred, target)
        iou, penalty = F.diou_terms(p, t, eps)
        size = geo.enclosing_wh(p, t)
        wh = ((geo.box_wh(p) - geo.box_wh(t))**2 / (size**2 + eps)).sum(-1)
        loss = iou.detach().clamp(min=0).pow(gamma) * (1 - iou + penalty +
                                                       wh)
        return guarded_reduction(reduce, loss, p, t, pred)
