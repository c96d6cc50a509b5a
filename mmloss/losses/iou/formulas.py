"""The IoU family's plain formulas: metrics and losses in autograd ops.

Each loss here is the reference of its fast path (:mod:`.cores`): the fast
path must give the same value and gradients, and its double backward runs
through these. Boxes are ``(x1, y1, x2, y2)``, shape (..., 4), already in
their compute dtype (float32 at least).
"""
import math
from types import SimpleNamespace

import torch
from torch import Tensor

from ... import geometry as geo
from ...errors import LossValueError

IOU_MODES = ('iou', 'giou', 'diou', 'ciou')
#: the variants Inner-IoU / Focaler-IoU apply to
VARIANT_MODES = IOU_MODES + ('siou', )
SCALE_MODES = ('linear', 'square', 'log')

#: ``bbox_overlaps`` (used by mmdet's IoU loss) floors the union at this.
UNION_FLOOR = 1e-6


def safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den``, with ``0 / 0`` taken as ``0`` (``x / 0`` stays Inf).

    The denominator of a ``0 / 0`` becomes 1 before dividing, so no NaN
    reaches the value or the gradient.
    """
    # 1 - |sign| is 1.0 exactly at zero, else 0 (NaN stays NaN): float
    # arithmetic, cheaper than comparisons and a boolean cast
    both_zero = (1 - torch.sign(den).abs()) * (1 - torch.sign(num).abs())
    return num / (den + both_zero)


def diou_terms(pred: Tensor, target: Tensor, eps: float):
    """IoU ``I/(U+eps)`` and DIoU's penalty ``rho**2 / (c**2 + eps)``."""
    iou = geo.aligned_iou(pred, target, eps)
    penalty = geo.centre_distance_sq(pred, target) / \
        geo.enclosing_diagonal_sq(pred, target, eps)
    return iou, penalty


def ciou_weight(iou: Tensor, v: Tensor) -> Tensor:
    """CIoU's trade-off ``alpha = [IoU > 0.5] v / (1 - IoU + v)``, detached.

    The ``0/0`` of identical boxes (``IoU = 1``, ``v = 0``) is taken as 0.
    """
    with torch.no_grad():
        # sign(iou - 1/2) clamped at 0: the float gate [IoU > 0.5]
        return safe_div(torch.sign(iou - 0.5).clamp_(min=0) * v,
                        1 - iou + v)


def terms(pred: Tensor, target: Tensor, mode: str, eps: float):
    """``(IoU, penalty)`` of an IoU variant (see
    :func:`mmloss.losses.iou.iou_terms`), on boxes in their compute dtype.
    """
    if mode == 'iou':
        iou = geo.aligned_iou(pred, target, eps)
        return iou, torch.zeros_like(iou)
    if mode == 'giou':
        inter, union = geo.box_inter_union(pred, target)
        union = union.clamp(min=eps)
        enclose = geo.enclosing_area(pred, target).clamp(min=eps)
        return inter / union, (enclose - union) / enclose
    iou, penalty = diou_terms(pred, target, eps)
    if mode == 'diou':
        return iou, penalty
    if mode == 'ciou':
        v = geo.aspect_consistency(pred, target, eps)
        return iou, penalty + ciou_weight(iou, v) * v
    raise LossValueError(f'iou_terms: mode must be one of {IOU_MODES}, '
                         f'but got {mode!r}')


def focaler(iou: Tensor, low: float, high: float) -> Tensor:
    """Focaler-IoU's mapping ``clamp((IoU - d) / (u - d), 0, 1)``."""
    return ((iou - low) / (high - low)).clamp(min=0, max=1)


def scaled(iou: Tensor, mode: str) -> Tensor:
    """``1 - IoU``, ``1 - IoU**2`` or ``-log IoU`` (``mode``)."""
    if mode == 'linear':
        return 1 - iou
    if mode == 'square':
        return 1 - iou**2
    return -iou.log()


def smooth(loss: Tensor, beta: float) -> Tensor:
    """Smooth-L1 shape: ``0.5 x**2 / beta`` below ``beta``, else
    ``x - 0.5 beta``."""
    return torch.where(loss < beta, 0.5 * loss * loss / beta,
                       loss - 0.5 * beta)


# ---------------------------------------------------------------------------
# The losses (element-wise, shape (...))
# ---------------------------------------------------------------------------
def plain_iou_loss(pred, target, mode, eps):
    """``scaled(max(I / max(U, 1e-6), eps))``."""
    iou = geo.aligned_iou(pred, target, UNION_FLOOR, floor=True)
    return scaled(iou.clamp(min=eps), mode)


def plain_giou_loss(pred, target, eps):
    """``1 - GIoU`` with union and enclosing area floored at ``eps``."""
    iou, penalty = terms(pred, target, 'giou', eps)
    return 1 - (iou - penalty)


def plain_diou_loss(pred, target, eps, ciou):
    """``1 - DIoU``, or ``1 - clamp(CIoU, -1, 1)`` with ``ciou``."""
    iou, penalty = terms(pred, target, 'ciou' if ciou else 'diou', eps)
    metric = iou - penalty
    return 1 - (metric.clamp(min=-1.0, max=1.0) if ciou else metric)


def plain_eiou_loss(pred, target, smooth_point, eps):
    """Smoothed ``1 - I_ext / (A_p + A_t - I_ext + eps)``."""
    inter = geo.extended_intersection(pred, target)
    union = geo.box_area(pred) + geo.box_area(target) - inter + eps
    return smooth(1 - inter / union, smooth_point)


#: SIoU's distance cost ``exp(gamma rho)`` has its exponent capped here,
#: and the shape cost's ``exp(-omega)`` has ``-omega`` capped at a quarter
#: of it (the cost is a fourth power), so neither overflows (float32 ends
#: near ``exp(88.7)``) and the sum of the costs stays finite. Boxes of a
#: valid target never reach the caps' effect on the value: a capped
#: distance term (``e**60``) clamps SIoU at 1 just as the unbounded one
#: does, and the shape cost of a valid target is below 1 per axis.
SIOU_EXPONENT_CAP = 60.0
#: ``omega`` above this gives a shape cost ``(1 - e**-50)**4``, 1 to within
#: 1e-21: the value of ``omega = |d| / 0 = inf`` (one size 0, the other
#: negative), reached without a division by zero.
SIOU_OMEGA_MAX = 50.0


def siou_shape_ratio(size_diff: Tensor, size_max: Tensor) -> Tensor:
    """SIoU's ``omega = |d| / m`` (``d`` the size difference, ``m`` the
    larger size), unclamped, without dividing by zero.

    ``0 / 0`` is 0 (equal sizes); ``|d| / 0`` with ``d != 0`` (a zero
    size and an inverted one) is :data:`SIOU_OMEGA_MAX` rather than Inf:
    the shape cost is the same (1), and no NaN reaches the gradient. The
    caller clamps the result to ``[-SIOU_EXPONENT_CAP / 4,
    SIOU_OMEGA_MAX]``.
    """
    # 1.0 exactly where m == 0, else 0 (float arithmetic, as safe_div)
    m_zero = 1 - torch.sign(size_max).abs()
    return size_diff.abs() / (size_max + m_zero) + \
        m_zero * torch.sign(size_diff).abs() * SIOU_OMEGA_MAX


def siou_parts(pred: Tensor, target: Tensor, iou: Tensor, eps: float,
               neg_gamma: bool) -> SimpleNamespace:
    """SIoU's terms from its IoU; shared by the plain and the fast path.

    Equal to MMDetection's formula wherever that is finite, and finite
    (values and gradients) on every finite box pair: the exponents are
    capped (:data:`SIOU_EXPONENT_CAP`), and ``omega``'s ``|d| / 0`` is
    :data:`SIOU_OMEGA_MAX` (see :func:`siou_shape_ratio`).
    """
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
    sin = safe_div(x.s.abs(), x.sigma)
    # 1.0 where sin_x > sqrt(1/2) (pick the y angle), else 0; the blend
    # below is exact (products with 0 and 1, sums with an exact 0) and
    # cheaper than torch.where
    x.pick_y = torch.sign(sin[..., 0] - math.sqrt(0.5)).clamp_(min=0)
    x.sin = sin[..., 1] * x.pick_y + sin[..., 0] * (1 - x.pick_y)
    angle = torch.cos(torch.asin(x.sin) * 2 - math.pi / 2)
    x.gamma = angle - 2 if neg_gamma else 2 - angle
    x.rho = (x.s / x.enclose)**2
    # gamma rho >= 0 grows without bound for a centre far outside a thin
    # enclosing box (inverted boxes): capped, see SIOU_EXPONENT_CAP
    x.exponent = x.gamma.unsqueeze(-1) * x.rho
    x.exp_rho = torch.exp(x.exponent.clamp(max=SIOU_EXPONENT_CAP))
    distance = 2 - x.exp_rho[..., 0] - x.exp_rho[..., 1]
    eps_h = pred.new_tensor([0.0, eps])
    x.wh_p, x.wh_t = geo.box_wh(pred) + eps_h, geo.box_wh(target) + eps_h
    x.size_diff = x.wh_p - x.wh_t
    x.size_max = torch.maximum(x.wh_p, x.wh_t)
    # omega < 0 only when both sizes are negative (both boxes inverted)
    x.omega_raw = siou_shape_ratio(x.size_diff, x.size_max)
    x.omega = x.omega_raw.clamp(min=-SIOU_EXPONENT_CAP / 4,
                                max=SIOU_OMEGA_MAX)
    x.exp_omega = torch.exp(-x.omega)
    shape = (1 - x.exp_omega)**2
    shape = (shape * shape).sum(-1)  # a fourth power, as two squares
    x.siou = iou - 0.5 * (distance + shape)
    x.loss = 1 - x.siou.clamp(min=-1.0, max=1.0)
    return x


def plain_siou_loss(pred, target, eps, neg_gamma):
    """``1 - clamp(SIoU, -1, 1)``."""
    return siou_parts(pred, target, geo.aligned_iou(pred, target, eps), eps,
                      neg_gamma).loss


def centre_size(boxes: Tensor) -> Tensor:
    """``(c_x, c_y, w, h)`` of ``(x1, y1, x2, y2)`` boxes, (..., 4)."""
    return torch.cat([geo.box_centre(boxes), geo.box_wh(boxes)], dim=-1)


def plain_bounded_from_centre_size(pred_cs: Tensor, target: Tensor,
                                   beta: float, eps: float) -> Tensor:
    """Bounded IoU loss (..., 4) of boxes given as ``(c_x, c_y, w, h)``
    (the target as corners, treated as a constant)."""
    target = target.detach()
    offset = (geo.box_centre(target) - pred_cs[..., :2]).abs()
    wh_p, wh_t = pred_cs[..., 2:], geo.box_wh(target)
    loss_xy = 1 - ((wh_t - 2 * offset) /
                   (wh_t + 2 * offset + eps)).clamp(min=0)
    loss_wh = 1 - torch.minimum(wh_t / (wh_p + eps), wh_p / (wh_t + eps))
    return smooth(torch.cat([loss_xy, loss_wh], dim=-1), beta)


def plain_bounded_iou_loss(pred, target, beta, eps):
    """Bounded IoU loss per coordinate, (..., 4); no gradient reaches
    ``target``."""
    return plain_bounded_from_centre_size(centre_size(pred), target, beta,
                                          eps)
