"""The IoU family's fast-path cores: the loss and its per-box Jacobian.

Each core is a :mod:`mmloss.engine.rowwise` core::

    core(pred, target, need_grad, need_target, *args)
        -> (loss, jac_pred, jac_target)

on (n, 4) boxes in column-major storage: loss ``i`` depends on box pair
``i`` only, so its gradient is one row ``d L_i / d box_i`` per input,
computed here next to the loss from the same intermediates, with hand-
derived formulas. Ties of ``torch.maximum``/``torch.minimum`` share the
gradient half and half, and ``clamp(min=b)`` passes it at exactly ``b``, as
autograd does, so the cores give the plain formulas' (:mod:`.formulas`)
gradients also for identical and touching boxes.
"""
import torch
from torch import Tensor

from ... import geometry as geo
from .formulas import (SIOU_EXPONENT_CAP, UNION_FLOOR, ciou_weight,
                       scaled, siou_parts, smooth)

__all__ = ['iou_core', 'giou_core', 'diou_core', 'eiou_core', 'siou_core',
           'bounded_core', 'bounded_step', 'CentreSize']


def masked(mask: Tensor, value: Tensor) -> Tensor:
    """``value`` where ``mask``, else 0 (a clamp's gradient gate).

    A product with a float mask (see :func:`ge_gate`): the same as
    ``torch.where`` for the finite values gated here, without a boolean
    comparison and dtype cast.
    """
    return value * mask


class Overlap:
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
            ge_gate(self.inter_raw, 0.0))
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


def ge_gate(x: Tensor, bound: float) -> Tensor:
    """``1.0`` where ``x >= bound``, else ``0.0`` (NaN stays NaN): the
    gradient gate of ``clamp(min=bound)``, in float for cheap products (the
    sign of ``x - bound`` is exact)."""
    return torch.sign(x - bound).add_(1).clamp_(max=1)


def iou_core(pred, target, need_grad, need_target, mode, eps):
    """``iou_loss`` and its per-box Jacobian (a row-wise engine core).

    Works on the (4, n) coordinate planes of the column-major boxes, with
    in-place arithmetic: few passes and few live temporaries.
    """
    p, t = pred.t(), target.t()
    inter_wh = torch.minimum(p[2:], t[2:]).sub_(torch.maximum(p[:2], t[:2]))
    inter_gate = ge_gate(inter_wh, 0.0) if need_grad and eps <= 0 else None
    inter_wh.clamp_(min=0)
    inter = inter_wh[0] * inter_wh[1]
    wh_p, wh_t = p[2:] - p[:2], t[2:] - t[:2]
    union_raw = (wh_p[0] * wh_p[1]).add_(wh_t[0] * wh_t[1]).sub_(inter)
    union = union_raw.clamp(min=UNION_FLOOR)
    iou = inter.div_(union)
    clamped = iou.clamp(min=eps)
    loss = scaled(clamped, mode)
    if not need_grad:
        return loss, None, None
    if mode == 'linear':
        g_iou = ge_gate(iou, eps).neg_()
    elif mode == 'square':
        g_iou = clamped.mul_(-2).mul_(ge_gate(iou, eps))
    else:
        g_iou = clamped.reciprocal_().neg_().mul_(ge_gate(iou, eps))
    # iou = I / U with U = A_p + A_t - I (U floored): dU/dI = -1
    g_area = (g_iou * iou).div_(union).mul_(ge_gate(union_raw, UNION_FLOOR))
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


def giou_core(pred, target, need_grad, need_target, eps):
    """``1 - GIoU`` (``bbox_overlaps`` form) and its per-box Jacobian."""
    ov = Overlap(pred, target)
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
    g_union = (iou / union - 1 / enclose).mul_(ge_gate(ov.union, eps))
    g_enclose = (union / enclose**2).mul_(ge_gate(enclose_raw, eps))
    enclose_wh = masked(ge_gate(enc_raw, 0.0),
                        g_enclose.unsqueeze(-1) * enc_wh.flip(-1))
    return (loss, ) + ov.backward(g_inter, g_union, need_target,
                                  enclose_wh=enclose_wh)


def diou_core(pred, target, need_grad, need_target, eps, ciou):
    """``1 - DIoU`` or ``1 - clamp(CIoU, -1, 1)`` and the per-box Jacobian."""
    ov = Overlap(pred, target)
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
        alpha = ciou_weight(iou, v)
        metric = iou - (penalty + alpha * v)
        loss = 1 - metric.clamp(min=-1.0, max=1.0)
    else:
        loss = 1 - (iou - penalty)
    if not need_grad:
        return loss, None, None
    one = iou.new_ones(())
    extra = {}
    if ciou:
        one = ge_gate(-metric.abs(), -1.0)  # the clamp's gate
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
    extra['enclose_wh'] = masked(ge_gate(enc_raw, 0.0),
                                 (2 * g_diag).unsqueeze(-1) * enc_wh)
    extra['offset'] = (one / diag / 2).unsqueeze(-1) * offset
    return (loss, ) + ov.backward(g_inter, g_union, need_target, **extra)


def eiou_core(pred, target, need_grad, need_target, smooth_point, eps):
    """Extended-IoU loss and its per-box Jacobian.

    Works on the (2, n) x/y planes of the column-major boxes, in place
    where it can: the four corner differences of the extended intersection
    live in one (4, 2, n) buffer whose axis-swapped copy gives every
    partial derivative of ``I`` at once.
    """
    p, t = pred.t(), target.t()
    lo = torch.maximum(p[:2], t[:2])
    hi = torch.minimum(p[2:], t[2:])
    corner = torch.minimum(p[:2], t[:2])
    # X_lo, X_hi, X_min, X_max (and Y): the corner pairs less the enclosing
    # corner; min/max of the differences equal min/max(lo, hi) - corner
    # exactly (rounding a difference is monotone)
    parts = lo.new_empty((4, ) + lo.shape)
    x_lo, x_hi, x_min, x_max = parts.unbind(0)
    torch.sub(lo, corner, out=x_lo)
    torch.sub(hi, corner, out=x_hi)
    del corner
    torch.minimum(x_lo, x_hi, out=x_min)
    torch.maximum(x_lo, x_hi, out=x_max)
    # I = X_hi Y_hi + X_min Y_min - X_lo Y_max - X_max Y_lo
    inter = x_hi[0] * x_hi[1]
    inter.add_(x_min[0] * x_min[1]).sub_(x_lo[0] * x_max[1]).sub_(
        x_max[0] * x_lo[1])
    wh_p = p[2:] - p[:2]
    union = wh_p[0] * wh_p[1]
    wh_t = t[2:] - t[:2]
    union.add_(wh_t[0] * wh_t[1]).sub_(inter).add_(eps)
    ratio = inter.div_(union)
    x = 1 - ratio
    # smooth(x): with q = min(x, s), (x - q/2) q / s is 0.5 x**2 / s below
    # s and x - s/2 above, and q / s is its slope (no comparison, no where)
    q = x.clamp(max=smooth_point)
    loss = torch.add(x, q, alpha=-0.5).mul_(q).div_(smooth_point)
    if not need_grad:
        return loss, None, None
    # x = 1 - I/U, U = A_p + A_t - I + eps: with h = x'/U (x' the smooth
    # slope), dL/dA = h I/U and dL/dI = -h - h I/U
    h = q.div_(smooth_point).div_(union)
    g_area = ratio.mul_(h)
    g_inter = h.add_(g_area).neg_()
    # d min(lo, hi) / d lo: 1, 1/2 at a tie, 0
    share = hi.sub_(lo).sign_().mul_(0.5).add_(0.5)
    other = 1 - share
    del lo
    # partial derivatives of I by the X's are the Y's: axis-swapped parts
    y_lo, y_hi, y_min, y_max = parts.flip(1).unbind(0)
    del parts
    g_lo = y_min * share
    g_lo.sub_(y_max).sub_(y_lo * other).mul_(g_inter)
    g_hi = y_min.mul_(other)
    g_hi.add_(y_hi).sub_(y_lo.mul_(share)).mul_(g_inter)
    # lo = max of the boxes' lo corners, hi = min of their hi corners,
    # corner = min of their lo corners: shares 1/2 +- sign(p - t) / 2
    sign = torch.sub(p, t).sign_()
    twice_lo = torch.add(g_hi, g_lo, alpha=2.0)
    grad_pred = _eiou_grad(g_hi, twice_lo, sign, wh_p, g_area, 1.0)
    grad_target = None
    if need_target:
        grad_target = _eiou_grad(g_hi, twice_lo, sign, wh_t, g_area, -1.0)
    return loss, grad_pred, grad_target


def _eiou_grad(g_hi, twice_lo, sign, wh, g_area, side):
    """One box's (n, 4) column-major EIoU Jacobian from the gradients of
    the overlap's corners (``side``: +1 for pred, -1 for target, whose
    shares of the ties are the other halves).

    With the corner gradient ``-(G_lo + G_hi)`` and ``h = side sign / 2``
    (exact products: ``h`` is 0 or +-1/2), the lo corners get
    ``h (2 G_lo + G_hi) - B`` and the hi corners ``B - h G_hi``, where
    ``B = G_hi / 2 + dL/dA (h, w)`` carries the area's part.
    """
    base = wh.flip(0).mul_(g_area).add_(g_hi, alpha=0.5)
    jac = base.new_empty((4, base.shape[1]))
    torch.addcmul(base, sign[:2], twice_lo, value=-0.5 * side,
                  out=jac[:2]).neg_()
    torch.addcmul(base, sign[2:], g_hi, value=-0.5 * side, out=jac[2:])
    return jac.t()


def siou_core(pred, target, need_grad, need_target, eps, neg_gamma):
    """SIoU loss and its per-box Jacobian (a row-wise engine core).

    The value is :func:`.formulas.siou_parts`'s (shared with the plain
    formula); the gradient works on the (2, n) x/y planes of its column-
    major terms, in place where it can.
    """
    ov = Overlap(pred, target)
    union = ov.union + eps
    x = siou_parts(pred, target, ov.inter / union, eps, neg_gamma)
    if not need_grad:
        return x.loss, None, None
    g_siou = ge_gate(-x.siou.abs(), -1.0).neg_()  # the clamp's gate
    g_cost = g_siou * -0.5  # d loss / d (distance, shape), (n,)
    # shape cost: sum (1 - e)**4, e = exp(-omega), omega = |d| / max(w_p,
    # w_t) clamped to [-CAP / 4, OMEGA_MAX]; the clamp passes the gradient
    # where it leaves omega as it is (bounds included)
    e = x.exp_omega.t()
    g_omega = 1 - e
    cube = g_omega * g_omega
    g_omega = cube.mul_(g_omega).mul_(e).mul_(g_cost * 4)
    g_omega.mul_(torch.sub(x.omega, x.omega_raw).t().sign_().abs_().neg_()
                 .add_(1))
    # omega = |d| / m (constant where m = 0): d/dd = sign(d) / m,
    # d/dm = -omega / m
    size_max = x.size_max.t()
    valid = torch.sign(size_max).abs_()  # 1.0 where m != 0
    g_omega.mul_(valid).div_(valid.neg_().add_(1).add_(size_max))
    sign = torch.sign(x.size_diff.t())
    g_max = torch.mul(g_omega, x.omega.t()).neg_()
    g_diff = g_omega.mul_(sign)
    # m = max(w_p, w_t): pred's share 1/2 + sign(d) / 2
    share = sign.mul_(0.5).add_(0.5)
    pred_wh = torch.addcmul(g_diff, g_max, share)
    target_wh = None
    if need_target:
        target_wh = torch.addcmul(g_diff.neg(), g_max, share.neg_().add_(1))
    del g_diff, g_max, share, sign, valid, size_max, g_omega, e
    # distance cost: 2 - sum exp(min(gamma rho, CAP)), rho = (s / c)**2
    exp_rho = x.exp_rho.t()
    exp_rho.mul_((SIOU_EXPONENT_CAP - x.exponent.t()).sign_().add_(1)
                 .clamp_(max=1))
    rho = x.rho.t()
    weighted = rho * exp_rho
    g_gamma = weighted[0].add_(weighted[1]).mul_(g_cost)  # -d loss/d gamma
    del weighted
    g_rho = exp_rho.mul_(x.gamma.mul(g_cost)).neg_()
    # angle cost cos(2 asin(q) - pi/2): derivative 2 (1 - 2q**2)/sqrt(1-q**2)
    q = x.sin
    q_sq = q * q
    den = (1 - q_sq).sqrt_()
    # gamma = 2 - angle, or angle - 2 with neg_gamma
    g_sin = (g_gamma.neg_() if neg_gamma else g_gamma).mul_(2).mul_(
        q_sq.mul_(-2).add_(1)).div_(den)
    del den, q_sq
    # q = |s_k| / |s| for the picked axis k: dq/ds = picked sign(s) / |s|
    # - q s / |s|**2 (no gradient where s = 0)
    sigma = x.sigma[..., 0]
    safe = torch.sign(sigma)  # 1.0 where != 0 (sigma >= 0)
    g_sin.mul_(safe)
    safe.neg_().add_(1).add_(sigma)  # sigma, or 1 where it is 0
    g_sin.div_(safe)
    s = x.s.t()
    g_s = torch.sign(s)
    g_s[0].mul_(1 - x.pick_y)
    g_s[1].mul_(x.pick_y)
    g_s.mul_(g_sin).sub_(s * g_sin.mul_(q).div_(safe))
    # rho = (s / c)**2: d/ds = 2 s / c**2, d/dc = -2 rho / c
    enclose = x.enclose.t()
    twice = g_rho.mul_(2).div_(enclose)
    g_s.addcmul_(twice / enclose, s).mul_(0.5)
    enclose_wh = twice.mul_(rho).neg_().mul_(
        ge_gate(x.enclose_raw.t(), eps))
    g_inter = g_siou / union
    g_union = g_siou.mul_(x.iou).div_(union).neg_()
    return (x.loss, ) + ov.backward(
        g_inter, g_union, need_target, pred_wh=pred_wh.t(),
        target_wh=None if target_wh is None else target_wh.t(),
        enclose_wh=enclose_wh.t(), offset=g_s.t())


# ---------------------------------------------------------------------------
# Bounded IoU: a per-coordinate loss
# ---------------------------------------------------------------------------
def bounded_core(pred_cs, target, need_grad, need_target, beta, eps):
    """Bounded IoU loss (n, 4) of ``pred_cs = (c_x, c_y, w, h)`` and its
    element-wise derivative.

    ``L_x`` depends on ``c_x`` alone, ``L_w`` on ``w`` alone (and so on),
    so in centre/size coordinates the Jacobian is diagonal: the returned
    (n, 4) ``(d L_x / d c_x, d L_y / d c_y, d L_w / d w, d L_h / d h)``.
    ``pred_cs`` and the corner boxes ``target`` (a constant) are column-
    major; the work runs on their (4, n) planes, in the plain formula's op
    order (identical values).
    """
    q, t = pred_cs.t(), target.t()  # (4, n) planes
    lo_t, hi_t = t[:2], t[2:]
    # offset |c_t - c_p| and sizes, (2, n) each
    signed = (lo_t + hi_t).mul_(0.5).sub_(q[:2])
    offset = signed.abs()
    wh_p, wh_t = q[2:], hi_t - lo_t
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
    q_p = wh_p / t_eps  # w_p / (w_t + eps)
    torch.sub(1, torch.minimum(q_t, q_p), out=loss[2:])
    value = smooth(loss, beta)
    if not need_grad:
        return value.t(), None, None
    # smooth-L1's slope, min(x / beta, 1)
    jac = loss.div_(beta).clamp_(max=1.0)  # reuse: (4, n)
    # x/y: with d = c_t - c_p, dL/dc_p = -2 gate sign(d) (2 w_t + eps) /
    # den**2 (gate: the clamp(min=0) of the ratio)
    gate = torch.sign(ratio).add_(1).clamp_(max=1)
    g_xy = den.pow_(2).reciprocal_().mul_(gate)
    del gate, den, ratio
    g_xy.mul_(torch.sign(signed))
    # 2 (2 w_t + eps) == 4 (w_t + eps) - 2 eps
    g_xy.mul_(t_eps.mul(4).sub_(2 * eps)).neg_()
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


class CentreSize(torch.autograd.Function):
    """``(c_x, c_y, w, h)`` of (N, 4) corner boxes, a linear map.

    Backward maps a gradient ``(G_c, G_wh)`` to the corners as
    ``(G_c / 2 - G_wh, G_c / 2 + G_wh)``; with grad mode on (a backward
    with ``create_graph=True``) in ordinary differentiable ops, so double
    backward goes through it too.
    """

    @staticmethod
    def forward(ctx, boxes):
        # column-major like the engine's blocks, in the op order of
        # geometry.box_centre / box_wh
        planes = geo.column_major(boxes).t()
        out = torch.empty_like(planes)
        torch.add(planes[:2], planes[2:], out=out[:2]).mul_(0.5)
        torch.sub(planes[2:], planes[:2], out=out[2:])
        return out.t()

    @staticmethod
    def backward(ctx, grad):
        half = grad[..., :2] * 0.5
        size = grad[..., 2:]
        if torch.is_grad_enabled():
            return torch.cat([half - size, half + size], dim=-1)
        out = grad.new_empty(grad.shape)
        torch.sub(half, size, out=out[..., :2])
        torch.add(half, size, out=out[..., 2:])
        return out


def bounded_step(beta: float, eps: float):
    """The :func:`mmloss.engine.rowwise.fused_sum` step of the Bounded IoU
    loss: ``sum(w * L)`` of a block of corner boxes, its weighted
    derivative mapped from centre/size to the corners (as
    :class:`CentreSize`) and written row-major into ``out_p``."""

    def step(p, t, w, out_p, out_t):
        planes = p.t()
        cs = torch.empty_like(planes)
        torch.add(planes[:2], planes[2:], out=cs[:2]).mul_(0.5)
        torch.sub(planes[2:], planes[:2], out=cs[2:])
        value, jac, _ = bounded_core(cs.t(), t, True, False, beta, eps)
        del cs
        if w is None:
            total = value.sum()
        else:
            total = (value * w).sum()
            jac = jac * w
        if out_p is not None:
            half = jac[:, :2] * 0.5
            torch.sub(half, jac[:, 2:], out=out_p[:, :2])
            torch.add(half, jac[:, 2:], out=out_p[:, 2:])
        return total

    return step
