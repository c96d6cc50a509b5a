"""The sigmoid focal kernels: the loss of logits and its gradient in one
pass (eager, blocked, and compiled with ``MMLOSS_COMPILE=1``), and the
row-block helpers the other classification kernels share.

:mod:`mmloss.losses.focal` runs them through the engine; VFL, QFL, KD and
the cross-entropies reuse :func:`sigmoid_focal_kernel` and
:func:`row_blocks`.
"""
import math
import warnings
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..engine import dispatch
from ..engine.rowwise import blocks
from ..reduction import weighted_total


def probability_cross_entropy(prob: Tensor, target: float) -> Tensor:
    """Element-wise BCE of probabilities ``prob`` against the constant
    ``target`` (0 or 1): ``-log(1 - p)`` or ``-log(p)``, the loss of the
    ``activated`` (probability) forms of focal and quality focal loss.

    ``F.binary_cross_entropy`` itself, as mmdet's probability losses use:
    its ``log`` is clamped at -100 and its gradient ``(p - t) / max(p (1 -
    p), 1e-12)`` stays finite at ``p = 0`` and ``p = 1``, which
    ``torch.sigmoid`` returns exactly for logits past about +-17 (float32).
    A clamped ``-log`` by autograd would give ``0 * inf = NaN`` there.
    Twice differentiable (torch defines its double backward).
    """
    return F.binary_cross_entropy(
        prob, prob.new_full((), float(target)).expand_as(prob),
        reduction='none')


def row_blocks(work: Tensor,
               loss_name: Optional[str] = None) -> List[Tuple[int, int]]:
    """``(start, stop)`` row blocks of an (N, C) tensor for the kernels of
    the classification losses, each of about ``block_rows *
    entries_per_block_row`` entries (the dispatch table's
    :class:`~mmloss.engine.dispatch.Tuning` for ``work``'s device; its
    ``loss_entries_per_block_row`` for ``loss_name`` where it has one): few
    enough blocks that per-op costs (and a thread team's start per op) stay
    small, small enough that a block's temporaries are reused (on the CPU:
    stay in the caches), not each a fresh (N, C) buffer."""
    entry = dispatch.tuning(work)
    per_row = entry.loss_entries_per_block_row.get(
        loss_name, entry.entries_per_block_row)
    rows = max(1, entry.block_rows * per_row // max(1, work.size(1)))
    return blocks(work.size(0), rows)


def elementwise_in_blocks(kernel: Callable, first: Tensor,
                          *others: Optional[Tensor], reduce_sum: bool,
                          need_grad: bool
                          ) -> Tuple[Tensor, Optional[Tensor]]:
    """``kernel(first, *others) -> (loss, grad)`` of an element-wise loss,
    run over the :func:`row_blocks` of ``first`` seen as rows of its last
    dimension (a heatmap's image rows): each block's temporaries stay in
    the caches instead of each being a fresh tensor of the input's size.

    ``others`` are ``None`` or shaped like ``first`` (blocked alike); any
    other shape (a broadcast weight) runs the kernel once, unblocked. The
    kernel gets 2-D blocks. ``loss`` is the sum where ``reduce_sum``, else
    element-wise like ``first``; ``grad`` (``d loss / d first``, or
    ``None`` without ``need_grad``) is written block by block into one
    tensor.
    """
    width = first.shape[-1] if first.dim() > 1 else 1
    spans = [(0, 0)]
    if first.numel() and all(x is None or x.shape == first.shape
                             for x in others):
        # the blocks of the (rows, width) view, asked of a stand-in of that
        # shape: reshaping a non-contiguous input here would copy it
        spans = row_blocks(first.new_empty(()).expand(
            first.numel() // width, width))
    if len(spans) == 1:
        return kernel(first, *others)
    flat = [None if x is None else x.reshape(-1, width)
            for x in (first, ) + others]
    # contiguous, whatever ``first``'s strides: written through 2-D views
    grad = first.new_empty(first.shape) if need_grad else None
    loss = None if reduce_sum else first.new_empty(first.shape)
    totals = []
    for start, stop in spans:
        part, part_grad = kernel(*(None if x is None else x[start:stop]
                                   for x in flat))
        if grad is not None:
            grad.view(-1, width)[start:stop] = part_grad
        if reduce_sum:
            totals.append(part)
        else:
            loss.view(-1, width)[start:stop] = part
    return (torch.stack(totals).sum() if reduce_sum else loss), grad


# ---------------------------------------------------------------------------
# the fast path: integer labels, logits, analytic gradient
# ---------------------------------------------------------------------------
#: ``F.softplus``'s threshold: above it the softplus of ``x`` is ``x``.
_SOFTPLUS_THRESHOLD = 20.0


def one_exponential_fits(logits: Tensor) -> bool:
    """Whether :func:`sigmoid_and_softplus` may take both from one
    exponential: where the CPU kernels may run
    (:func:`mmloss.engine.dispatch.cpu_kernels`; the largest logit is read
    on the host) and no logit exceeds ``F.softplus``'s threshold."""
    return logits.numel() > 0 and dispatch.cpu_kernels(logits) and \
        logits.max().item() <= _SOFTPLUS_THRESHOLD


def sigmoid_and_softplus(logits: Tensor, one_exp: Optional[bool] = None
                         ) -> Tuple[Tensor, Tensor]:
    """``(sigmoid(x), softplus(x))``, two fresh tensors.

    With ``one_exp`` (by default :func:`one_exponential_fits`) both come
    from one exponential ``e = exp(x)``: ``sigmoid = e / (1 + e)`` and
    ``softplus = log1p(e)`` (``F.softplus``'s own formula below its
    threshold): two transcendental passes instead of three. Exact to
    rounding wherever ``e`` is finite; a logit whose exponential overflows
    gives ``NaN``, so the caller must know there is none. Otherwise
    ``torch.sigmoid`` and ``F.softplus``, stable for any logit.
    """
    if one_exp is None:
        one_exp = one_exponential_fits(logits)
    if one_exp:
        exp = torch.exp(logits)
        prob = torch.add(exp, 1.0)
        torch.div(exp, prob, out=prob)
        return prob, exp.log1p_()
    return torch.sigmoid(logits), F.softplus(logits)


def _pow(base: Tensor, exponent: float) -> Tensor:
    """A fresh tensor ``base ** exponent``, common exponents as products."""
    if exponent == 0:
        return torch.ones_like(base)
    if exponent == 1:
        return base.clone()
    if exponent == 2:
        return base * base
    return base.pow(exponent)


class _Positives(NamedTuple):
    """The label entries of :func:`sigmoid_focal_kernel`, one per row.

    ``flat``: each row's label entry as a flat index of the (N, C) logits;
    ``foreground``: whether the row has a label (else its entry is the
    clamped last column and keeps its negative value); ``loss`` and
    ``grad``: the positive formula's value and gradient there (``None``
    where not asked for), with the weight in and ``out_scale`` left out,
    as the negative formula has them.
    """
    flat: Tensor
    foreground: Tensor
    loss: Optional[Tensor]
    grad: Optional[Tensor]


def _out_scale(weight: Optional[Tensor], alpha: float) -> float:
    """Without a weight, the negatives' ``1 - alpha`` is applied to the
    results at the end (free for a sum and the gradient) instead of in an
    N x C pass."""
    return 1 - alpha if weight is None and alpha < 1 else 1.0


def _positives(logits: Tensor, labels: Optional[Tensor],
               weight: Optional[Tensor], gamma: float, alpha: float,
               epsilon: float, need_value: bool,
               need_grad: bool) -> Optional[_Positives]:
    """The positive formula on each row's label entry (N values: taken
    once for all rows, not per row block), or ``None`` without labels."""
    num_rows, num_classes = logits.shape
    if labels is None or num_classes == 0:
        return None
    out_scale = _out_scale(weight, alpha)
    column = labels.clamp(max=num_classes - 1)
    foreground = labels < num_classes
    flat = torch.arange(num_rows, device=logits.device) * num_classes + \
        column
    pos_weight = 1.0 if weight is None else (
        weight.reshape(-1) if weight.shape[1] == 1 else weight.take(flat))
    pos_logit = logits.take(flat)
    pos_prob = torch.sigmoid(pos_logit)
    pos_one_minus = 1 - pos_prob
    pos_softplus = F.softplus(-pos_logit)  # -log(p)
    pos_focal = _pow(pos_one_minus, gamma) * (pos_weight / out_scale)
    loss = grad = None
    if need_value:
        loss = alpha * pos_focal * pos_softplus
        if epsilon != 0:
            loss = loss + epsilon * pos_focal * pos_one_minus
    if need_grad:
        grad = -alpha * pos_focal * (
            gamma * pos_prob * pos_softplus + pos_one_minus)
        if epsilon != 0:
            grad = grad - (epsilon * (gamma + 1)) * pos_focal * \
                pos_one_minus * pos_prob
    return _Positives(flat, foreground, loss, grad)


def _negatives(logits: Tensor, weight: Optional[Tensor], gamma: float,
               alpha: float, epsilon: float, reduce_sum: bool,
               need_grad: bool, need_value: bool,
               grad_out: Optional[Tensor], one_exp: Optional[bool],
               grad_factor: Optional[float],
               label_entries: Optional[Tensor]):
    """The negative formula on every entry of ``logits`` (N x C passes).

    Returns ``(loss, grad, inside, grad_scale, taken)``: ``loss`` is the
    element-wise loss times ``out_scale`` (``None`` where not asked for),
    or with ``reduce_sum`` its sum *without* ``out_scale``; ``grad`` the
    gradient times ``inside`` (1, or with ``grad_factor`` every factor);
    ``grad_scale`` the factor left out of both; ``taken`` (with
    ``reduce_sum`` and ``label_entries``, the flat indices of the label
    entries) the element-wise negative loss at those entries.
    """
    out_scale = _out_scale(weight, alpha)
    row_weight = 1.0 if weight is None else weight
    neg_factor = None if weight is None and alpha < 1 else \
        row_weight * (1 - alpha)
    # softplus(x) = -log(1 - p)
    prob, softplus = sigmoid_and_softplus(logits, one_exp)
    if need_grad or epsilon != 0:
        focal = _pow(prob, gamma)
    else:  # the probabilities are needed for the focal factor only
        focal = prob.pow_(gamma) if gamma != 2 else prob.mul_(prob)
    poly = None
    if epsilon != 0:  # eps * w * p**(g+1), not alpha-balanced
        poly = focal * prob
        poly.mul_(row_weight * (epsilon / out_scale))
    if neg_factor is not None:
        focal.mul_(neg_factor)  # B / out_scale

    loss, taken = None, None
    if need_value:
        # the focal factor is needed again for the gradient only
        loss = focal * softplus if need_grad else focal.mul_(softplus)
        if poly is not None:
            loss.add_(poly)
        if reduce_sum:
            if label_entries is not None:
                taken = loss.take(label_entries)
            # (a dot product would skip the product tensor, but BLAS sums
            # in float32 in order: 1e-5 relative error at 8M entries)
            loss = loss.sum()
        elif out_scale != 1:
            loss.mul_(out_scale)

    grad, grad_scale, inside = None, 1.0, 1.0
    if need_grad:
        if gamma > 0:
            # g (1-p) sp + p == g * lerp(sp, 1/g, p); softplus is done
            base = softplus.lerp_(softplus.new_tensor(1 / gamma), prob)
            grad_scale = gamma
        else:
            base = prob
        # the factor applied here: 1, or all of it (then nothing is left)
        if grad_factor is not None:
            inside = grad_factor * grad_scale * out_scale
        if grad_out is None:
            grad_out = base if base is softplus else None
        if inside == 1.0:
            grad = torch.mul(base, focal, out=grad_out) \
                if grad_out is not None else base * focal
        else:
            grad = torch.addcmul(base.new_zeros(()), base, focal,
                                 value=inside, out=grad_out)
        if poly is not None:  # d/dx eps p**(g+1) = eps (g+1) p**(g+1) (1-p)
            grad.addcmul_(poly, 1 - prob,
                          value=(gamma + 1) / grad_scale * inside)
    return loss, grad, inside, grad_scale, taken


def _finish(loss: Optional[Tensor], grad: Optional[Tensor],
            positives: Optional[_Positives], taken: Optional[Tensor],
            out_scale: float, reduce_sum: bool, inside: float,
            grad_scale: float) -> Optional[Tensor]:
    """The positives written over the label entries of the whole (N, C)
    ``grad`` and element-wise ``loss`` (in place), or added to the summed
    ``loss`` (minus the negative values ``taken`` there); returns the loss,
    now times ``out_scale``."""
    if positives is not None:
        flat, foreground = positives.flat, positives.foreground
        if grad is not None:
            grad.put_(flat, torch.where(
                foreground, positives.grad * (inside / grad_scale),
                grad.take(flat)))
        if loss is not None and reduce_sum:
            loss = loss + torch.where(foreground, positives.loss - taken,
                                      0.0).sum()
        elif loss is not None:
            loss.put_(flat, torch.where(foreground,
                                        positives.loss * out_scale,
                                        loss.take(flat)))
    if loss is not None and reduce_sum:
        loss = loss * out_scale
    return loss


def sigmoid_focal_kernel(logits: Tensor, labels: Optional[Tensor],
                         weight: Optional[Tensor], gamma: float, alpha: float,
                         epsilon: float, reduce_sum: bool, need_grad: bool,
                         *, need_value: bool = True,
                         grad_out: Optional[Tensor] = None,
                         one_exp: Optional[bool] = None,
                         grad_factor: Optional[float] = None
                         ) -> Tuple[Optional[Tensor], Optional[Tensor], float]:
    """Loss (element-wise or summed) and ``d loss / d logits`` in one pass.

    ``weight`` is (N, 1), (N, C) or None and multiplies both results;
    ``labels`` (N,) lie in ``[0, C]`` with ``C`` the background (None: all
    background). Pure tensor code without data-dependent shapes, and
    without host syncs but for :func:`one_exponential_fits` where
    ``one_exp`` is ``None`` (see :func:`sigmoid_and_softplus`).
    ``need_value=False`` skips the loss (``None``), ``need_grad`` the
    gradient; ``grad_out`` (N, C), if given, receives the gradient.

    The negative formula runs on every entry (:func:`_negatives`) and the
    positive one on the N label entries (:func:`_positives`), which then
    overwrite theirs (``take``/``put_`` on flat indices; ``gather``/
    ``scatter`` along dim 1 is much slower on CPU). Every ``N x C`` pass
    costs about as much as the next, so the gradient ``B * (g (1 - p) sp +
    p)`` with ``B = (1 - alpha) w p**g`` is written as ``g * B * lerp(sp,
    1/g, p)`` (one pass instead of three) and the factor ``g`` is returned
    as ``grad_scale`` for backward to apply (with ``1 - alpha`` when there
    is no weight). ``grad_factor`` (a number: the incoming gradient) asks
    for the whole gradient instead: every factor goes into that one pass
    (``addcmul`` of a scalar zero) and ``grad_scale`` is 1.

    Returns:
        (loss, grad, grad_scale): ``loss`` is (N, C) or a scalar sum, the
        gradient is ``grad * grad_scale``.
    """
    positives = _positives(logits, labels, weight, gamma, alpha, epsilon,
                           need_value, need_grad)
    loss, grad, inside, grad_scale, taken = _negatives(
        logits, weight, gamma, alpha, epsilon, reduce_sum, need_grad,
        need_value, grad_out, one_exp, grad_factor,
        None if positives is None else positives.flat)
    out_scale = _out_scale(weight, alpha)
    loss = _finish(loss, grad, positives, taken, out_scale, reduce_sum,
                   inside, grad_scale)
    if grad_factor is not None:
        return loss, grad, 1.0
    return loss, grad, grad_scale * out_scale


def fused_sigmoid_focal_kernel(logits: Tensor, labels: Tensor,
                               weight: Optional[Tensor], gamma: float,
                               alpha: float, epsilon: float, reduce_sum: bool,
                               need_grad: bool, need_value: bool = True
                               ) -> Tuple[Optional[Tensor], Optional[Tensor],
                                          float]:
    """:func:`sigmoid_focal_kernel` written entry by entry, for the compiler.

    Same arguments and results (``grad_scale`` is 1). The positive mask
    ``labels[:, None] == arange(C)`` and every intermediate would be ``N x C``
    tensors in eager mode; ``torch.compile`` fuses them all into one loop
    that reads the logits once and writes the loss or the gradient once.
    With ``a`` the mass away from the target (``p`` for a negative, ``1 -
    p`` for a positive), ``b = 1 - a`` and ``s = +1`` (negative) or ``-1``
    (positive)::

        loss  = a_t * a**g * softplus(s * x) + eps * a**(g+1)
        dl/dx = s * (a_t * a**g * (g * b * softplus(s * x) + a)
                     + eps * (g+1) * a**(g+1) * b)
    """
    classes = torch.arange(logits.shape[1], device=logits.device)
    positive = labels.unsqueeze(1) == classes
    prob = torch.sigmoid(logits)
    away = torch.where(positive, 1 - prob, prob)
    toward = 1 - away
    cross_entropy = F.softplus(torch.where(positive, -logits, logits))
    modulator = away.pow(gamma)
    balanced = torch.where(positive, logits.new_tensor(alpha),
                           logits.new_tensor(1 - alpha)) * modulator
    loss = None
    if need_value:
        loss = balanced * cross_entropy
        if epsilon != 0:
            loss = loss + epsilon * modulator * away
        loss = weighted_total(loss, weight, reduce_sum)
    grad = None
    if need_grad:
        grad = balanced * (gamma * toward * cross_entropy + away)
        if epsilon != 0:
            grad = grad + (epsilon * (gamma + 1)) * modulator * away * toward
        grad = torch.where(positive, -grad, grad)
        if weight is not None:
            grad = grad * weight
    return loss, grad, 1.0


_compiled_kernel = None
_compile_failed = False


def _compiled() -> Optional[Callable]:
    """The compiled kernel when ``MMLOSS_COMPILE`` asks for it and compiling
    has not failed before, else ``None``."""
    global _compiled_kernel
    if not dispatch.compile_enabled() or _compile_failed:
        return None
    if _compiled_kernel is None:
        _compiled_kernel = torch.compile(fused_sigmoid_focal_kernel,
                                         dynamic=True)
    return _compiled_kernel


def _blocked_kernel(logits: Tensor, labels: Tensor, weight: Optional[Tensor],
                    gamma: float, alpha: float, epsilon: float,
                    reduce_sum: bool, need_grad: bool, need_value: bool,
                    plan: Optional[List[Sequence[int]]] = None,
                    grad_factor: Optional[float] = None
                    ) -> Tuple[Optional[Tensor], Optional[Tensor], float,
                               List[Tuple[int, bool]]]:
    """:func:`sigmoid_focal_kernel` block by block (:func:`row_blocks`):
    its ``N x C`` temporaries live one block at a time, each block's
    gradient is written straight into one (N, C) tensor.

    ``plan`` is what a forward pass took, for backward: per block its
    last row (exclusive) and whether it took :func:`sigmoid_and_softplus`
    from one exponential, so backward runs the same blocks the same way
    whatever the tuning table says by then. Without it, the blocks are
    :func:`row_blocks`, and a block's summed loss is computed from one
    exponential where the CPU kernels may run and kept if finite (an
    exponential that overflowed gives ``NaN``), else computed again stably;
    any other block asks :func:`one_exponential_fits`. Returns what each
    block took, as ``(stop, fits)`` pairs. ``grad_factor``: as for
    :func:`sigmoid_focal_kernel`.
    """
    if plan is None:
        spans = row_blocks(logits)
    else:
        stops = [int(stop) for stop, _ in plan]
        spans = list(zip([0] + stops[:-1], stops))
    # the label entries once for all rows (N-sized ops: per block, their
    # per-call costs would add up to more than their arithmetic)
    positives = _positives(logits, labels, weight, gamma, alpha, epsilon,
                           need_value, need_grad)
    take_labels = positives is not None and need_value and reduce_sum
    grad = torch.empty_like(logits) if need_grad else None
    loss = None
    if need_value and not reduce_sum and len(spans) > 1:
        loss = torch.empty_like(logits)
    try_first = plan is None and need_value and reduce_sum and \
        dispatch.cpu_kernels(logits)
    taken, totals, at_labels = [], [], []
    inside, grad_scale = 1.0, 1.0
    for index, (start, stop) in enumerate(spans):
        block = logits if len(spans) == 1 else logits[start:stop]
        # the label entries as flat indices of the block
        entries = positives.flat[start:stop] - start * logits.shape[1] \
            if take_labels else None
        args = (block, None if weight is None else weight[start:stop], gamma,
                alpha, epsilon, reduce_sum, need_grad, need_value)
        out = None if grad is None else grad[start:stop]
        if plan is not None:
            fits = bool(plan[index][1])
        elif try_first:
            part, _, inside, grad_scale, neg = _negatives(
                *args, out, True, grad_factor, entries)
            fits = math.isfinite(part.item())
        else:
            fits = one_exponential_fits(block)
        if not try_first or not fits:
            part, _, inside, grad_scale, neg = _negatives(
                *args, out, fits, grad_factor, entries)
        taken.append((stop, fits))
        if part is None:
            continue
        if reduce_sum:
            totals.append(part)
            at_labels.append(neg)
        elif loss is None:
            loss = part
        else:
            loss[start:stop] = part
    if totals:
        loss = totals[0] if len(totals) == 1 else torch.stack(totals).sum()
    out_scale = _out_scale(weight, alpha)
    loss = _finish(loss, grad, positives, torch.cat(at_labels)
                   if take_labels and at_labels else None, out_scale,
                   reduce_sum, inside, grad_scale)
    scale = 1.0 if grad_factor is not None else grad_scale * out_scale
    return loss, grad, scale, taken


def _run_kernel(*args, plan: Optional[List[Sequence[int]]] = None,
                grad_factor: Optional[float] = None
                ) -> Tuple[Optional[Tensor], Optional[Tensor], float,
                           Optional[List[Tuple[int, bool]]]]:
    """``fused_sigmoid_focal_kernel(*args)`` compiled when ``MMLOSS_COMPILE``
    asks for it and compiling works (with ``None`` for what the blocks
    took), else the eager kernel block by block (:func:`_blocked_kernel`).
    ``grad_factor``: as for :func:`sigmoid_focal_kernel`.
    """
    global _compile_failed
    compiled = _compiled()
    if compiled is not None:
        try:
            loss, grad, scale = compiled(*args)
            if grad is not None and grad_factor is not None:
                grad = grad.mul_(grad_factor * scale)
                scale = 1.0
            return loss, grad, scale, None
        except Exception as error:  # any backend failure: fall back
            _compile_failed = True
            warnings.warn(f'mmloss: torch.compile of the sigmoid focal '
                          f'kernel failed ({type(error).__name__}: {error}); '
                          f'using the eager kernel')
    return _blocked_kernel(*args, plan=plan, grad_factor=grad_factor)
