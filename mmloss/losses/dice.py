"""Dice loss for masks.

Milletari et al., "V-Net: Fully Convolutional Neural Networks for Volumetric
Medical Image Segmentation", 3DV 2016, https://arxiv.org/abs/1606.04797.

Per sample ``i``, over its flattened pixels, with probabilities ``p``
(``sigmoid(pred)`` when activated) and targets ``t`` (``a = sum p t``)::

    V-Net:  loss_i = 1 - 2a / ((sum p^2 + eps) + (sum t^2 + eps))
    naive:  loss_i = 1 - (2a + eps) / (sum p + sum t + eps)

then weighted per sample and reduced by MMDetection's rules
(:class:`~mmloss.reduction.Reduction`).

Shapes: ``pred`` (N, *) and ``target`` with the same number of elements per
sample (flattened to (N, D)), ``weight`` (N,); the loss is (N,) for
``'none'``, else a scalar.

Two executions of the same maths, chosen per call by
:mod:`mmloss.engine.dispatch`: the plain formula (autograd ops) and a
kernel. Forward (``_dice_value``) takes the per-sample sums with
element-wise products and row sums block by block; backward
(``_dice_gradient``) builds the gradient from them. On logits the kernel
runs through :class:`~mmloss.engine.functions.GradientFromOutput`: the
graph keeps the sigmoid's probabilities (one (N, D) tensor, as mmdet
keeps the sigmoid's output; not the logits) and two numbers per sample,
and backward writes the gradient over the probabilities, with no second
sigmoid. On probabilities it runs through
:class:`~mmloss.engine.functions.GradientInBackward`, keeping the caller's
probabilities (a reference) and the two sums. Sums are taken in float32 at
least, with autocast switched off.
"""
from numbers import Real
from typing import Optional

import torch
from torch import Tensor

from ..checks import (check_float, check_positive, check_pred_target,
                      check_weight_shape)
from ..engine import dispatch
from ..engine.functions import (FromOutput, IncomingGradient,
                                gradient_from_output, gradient_in_backward)
from ..errors import LossNotImplementedError, LossValueError
from ..precision import compute_dtype, loss_dtype
from ..reduction import Reduction
from ..registry import MODELS
from ..typing_utils import AvgFactor, OptStr, OptTensor
from .base import BaseLoss, gradient_scale, reduce_in_kernel
from .focal_kernels import row_blocks

__all__ = ['dice_loss', 'sigmoid_dice_loss', 'DiceLoss']

LOSS_NAME = 'DiceLoss'
# dtypes computed as they are (half inputs compute in float32)
_WIDE = (torch.float32, torch.float64)


def _denominator(total: Tensor, eps: float, naive_dice: bool) -> Tensor:
    """``S``: ``total + eps`` (naive) or ``total + 2 eps`` (V-Net), where
    ``total`` is ``sum p + sum t`` or ``sum p^2 + sum t^2``."""
    return total + (eps if naive_dice else 2 * eps)


def _dice_from_sums(inter: Tensor, denom: Tensor, eps: float,
                    naive_dice: bool) -> Tensor:
    """``1 - dice`` of each row from ``a = sum p t`` and ``S``."""
    if naive_dice:
        return 1 - (2 * inter + eps) / denom
    return 1 - 2 * inter / denom


def _dice_rows(prob: Tensor, target: Tensor, eps: float,
               naive_dice: bool) -> Tensor:
    """The per-sample loss (N,) of (N, D) probabilities, by autograd ops.

    The two sums of the denominator are taken as one (``sum (p + t)``,
    ``sum (p^2 + t^2)``).
    """
    inter = (prob * target).sum(1)
    if naive_dice:
        total = (prob + target).sum(1)
    else:
        total = torch.addcmul(prob * prob, target, target).sum(1)
    return _dice_from_sums(inter, _denominator(total, eps, naive_dice), eps,
                           naive_dice)


def _dice_value(pred: Tensor, target: Tensor, rule: Reduction, eps: float,
                naive_dice: bool, sigmoid: bool,
                kept: Optional[Tensor] = None):
    """The reduced dice loss of (N, D) inputs and the two per-sample sums
    its gradient needs: ``(value, (a, S))``, as
    :class:`~mmloss.engine.functions.GradientInBackward` takes it.

    ``a = sum p t`` and ``S = sum p^2 + sum t^2 + 2 eps`` (naive: ``sum p +
    sum t + eps``), taken block by block of rows
    (:func:`~mmloss.losses.focal_kernels.row_blocks`) with element-wise
    products and row sums in two block-sized scratch buffers, so no (N, D)
    temporary is allocated.

    Args:
        pred (Tensor): (N, D) logits if ``sigmoid`` else probabilities, in
            the compute dtype (float32 at least).
        target (Tensor): (N, D) targets, same dtype.
        rule (Reduction): weight (N,) (or ``None``) and reduction.
        eps (float): smoothing term.
        naive_dice (bool): first-power denominator instead of V-Net's.
        sigmoid (bool): apply the sigmoid to ``pred`` first.
        kept (Tensor, optional): with ``sigmoid``, an (N, D) tensor that
            receives the probabilities (instead of a block-sized scratch).
    """
    inter = pred.new_empty(pred.shape[:1])
    total = pred.new_empty(pred.shape[:1])
    spans = row_blocks(pred, LOSS_NAME)
    shape = (spans[0][1] - spans[0][0], pred.shape[1])
    scratch = pred.new_empty(shape)
    probs = pred.new_empty(shape) if sigmoid and kept is None else None
    for start, stop in spans:
        rows = stop - start
        x, t, work = pred[start:stop], target[start:stop], scratch[:rows]
        out = None if not sigmoid else kept[start:stop] if kept is not None \
            else probs[:rows]
        prob = torch.sigmoid(x, out=out) if sigmoid else x
        torch.sum(torch.mul(prob, t, out=work), 1, out=inter[start:stop])
        if naive_dice:
            torch.add(prob, t, out=work)
        else:
            torch.mul(prob, prob, out=work).addcmul_(t, t)
        torch.sum(work, 1, out=total[start:stop])
    denom = _denominator(total, eps, naive_dice)
    rows = _dice_from_sums(inter, denom, eps, naive_dice)
    value, _ = reduce_in_kernel(rule, rows, rows.numel(), False)
    return value, (inter, denom)


def _dice_gradient(pred: Tensor, target: Tensor, inter: Tensor,
                   denom: Tensor, rule: Reduction, eps: float,
                   naive_dice: bool, sigmoid: bool, incoming: Tensor,
                   probabilities: Optional[Tensor] = None,
                   out: Optional[Tensor] = None) -> Tensor:
    """The gradient of :func:`_dice_value` from the inputs and its sums,
    times the ``incoming`` gradient (a scalar, or (N,) for ``'none'``).

    The V-Net loss of a sample has the gradient ``(4a / S^2) p - (2 / S)
    t`` (naive: ``(2a + eps) / S^2 - (2 / S) t``), times ``p (1 - p)``
    through the sigmoid (``p`` recomputed from the logits block by block:
    one pass, where keeping it would hold an (N, D) tensor from forward to
    backward). The sample's weight, the reduction's factor and the incoming
    gradient join the per-sample factors, so no pass scales the result.
    The gradient is the only (N, D) tensor allocated.

    With the (N, D) sigmoid ``probabilities`` that forward kept, no
    sigmoid is recomputed. The gradient goes into ``out`` where given
    (``probabilities`` itself included: then block by block through a
    block-sized scratch, allocating nothing of size (N, D)).
    """
    # per sample: the weight, the reduction's factor, the incoming gradient
    factor = incoming.to(denom.dtype) * gradient_scale(
        rule, inter.numel(), 1.0, denom.dtype)
    if rule.weight is not None:
        factor = factor * rule.weight
    target_factor = (-2 * factor) / denom
    if naive_dice:
        prob_factor = None
        offset = (2 * inter + eps) * factor / denom.square()
    else:
        prob_factor = 4 * inter * factor / denom.square()
    spans = row_blocks(pred, LOSS_NAME)
    block = (spans[0][1] - spans[0][0], pred.shape[1])
    gradient = torch.empty_like(pred) if out is None else out
    in_place = out is not None and out is probabilities
    scratch = pred.new_empty(block) if in_place else None
    probs = pred.new_empty(block) \
        if sigmoid and probabilities is None else None
    for start, stop in spans:
        x, t = pred[start:stop], target[start:stop]
        if probabilities is not None:
            prob = probabilities[start:stop]
        else:
            prob = torch.sigmoid(x, out=probs[:stop - start]) \
                if sigmoid else x
        part = torch.mul(t, target_factor[start:stop, None],
                         out=scratch[:stop - start] if in_place
                         else gradient[start:stop])
        if naive_dice:
            part.add_(offset[start:stop, None])
        else:
            part.addcmul_(prob, prob_factor[start:stop, None])
        if sigmoid:
            # times p (1 - p), into the gradient's block
            torch.ops.aten.sigmoid_backward.grad_input(
                part, prob, grad_input=gradient[start:stop])
    return gradient


def _check_inputs(pred: Tensor, target: Tensor, rule: Reduction) -> None:
    """Shapes and dtypes only (no values: no host sync), each condition
    tested inline (this runs on every call)."""
    name = rule.loss_name
    check_pred_target(name, pred, target)
    if pred.dim() < 2 or target.dim() < 1 or \
            pred.shape[0] != target.shape[0] or \
            pred.numel() != target.numel():
        raise LossValueError(
            f'{name}: pred must be (N, *) and target hold the same '
            f'elements per sample, but got {tuple(pred.shape)} and '
            f'{tuple(target.shape)}')
    if not pred.is_floating_point():
        check_float(name, 'pred', pred)
    if rule.weight is not None:
        check_weight_shape(name, rule.weight, pred.shape[:1])
    rule.checked()


def _rows_of(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """``tensor`` as (N, D) rows in ``dtype`` (a view where it can be)."""
    dim = tensor.dim()
    rows = tensor if dim == 2 else \
        tensor.flatten(1) if dim > 2 else tensor[:, None]
    return rows if rows.dtype == dtype else rows.to(dtype)


def _dice_plain(pred: Tensor, target: Tensor, rule: Reduction,
                dtype: torch.dtype, eps: float, naive_dice: bool,
                sigmoid: bool) -> Tensor:
    """The plain formula (autograd ops), weighted and reduced."""
    with dispatch.autocast_off(pred):
        x = _rows_of(pred, dtype)
        rows = _dice_rows(x.sigmoid() if sigmoid else x,
                          _rows_of(target, dtype), eps, naive_dice)
        return rule.apply(rows)


def _dice(pred: Tensor, target: Tensor, rule: Reduction, eps: float,
          naive_dice: bool, sigmoid: bool, fast: Optional[bool]) -> Tensor:
    """The dice loss of checked inputs, by the kernel or the plain formula.

    ``fast=None`` asks the dispatcher (its size: the elements ``N x D``),
    ``False`` forces the plain formula, ``True`` skips the size
    thresholds.
    """
    dtype = pred.dtype
    out_dtype = loss_dtype(pred, rule.reduces)
    if dtype not in _WIDE:
        dtype = compute_dtype(pred)
    rule = rule.cast(dtype)
    # the kernel gives no gradient to the target, the weight or avg_factor
    if fast is False or target.requires_grad or rule.needs_grad:
        use_kernel = False
    elif fast is None:
        # the size that decides is the number of mask elements N x D (the
        # kernel's saving grows with it, whatever the split into samples)
        use_kernel = dispatch.use_fast(LOSS_NAME, pred, target,
                                       elements=pred.numel())
    else:
        use_kernel = dispatch.fast_paths_enabled()
    if not use_kernel:
        out = _dice_plain(pred, target, rule, dtype, eps, naive_dice,
                          sigmoid)
        return out if out.dtype == out_dtype else out.to(out_dtype)

    def plain(pred: Tensor) -> Tensor:
        # the same formula, for a backward with create_graph=True
        return _dice_plain(pred, target, rule, dtype, eps, naive_dice,
                           sigmoid)

    def value_kernel(pred: Tensor):
        return _dice_value(_rows_of(pred, dtype), _rows_of(target, dtype),
                           rule, eps, naive_dice, sigmoid)

    def grad_kernel(incoming: Tensor, needs, sums, pred: Tensor):
        gradient = _dice_gradient(
            _rows_of(pred, dtype), _rows_of(target, dtype), *sums, rule,
            eps, naive_dice, sigmoid, incoming)
        # a fresh (N, D) buffer
        return (gradient.view(pred.shape), )

    with dispatch.autocast_off(pred):
        if sigmoid:
            out = gradient_from_output(_sigmoid_rule(
                target, rule, dtype, eps, naive_dice), pred)
        else:
            out = gradient_in_backward(value_kernel,
                                       IncomingGradient(grad_kernel), plain,
                                       pred)
    return out if out.dtype == out_dtype else out.to(out_dtype)


def _sigmoid_rule(target: Tensor, rule: Reduction, dtype: torch.dtype,
                  eps: float, naive_dice: bool) -> FromOutput:
    """The sigmoid dice kernel as a
    :class:`~mmloss.engine.functions.FromOutput`: forward keeps the
    probabilities ``p`` (shaped like ``pred``) and two numbers per sample;
    backward writes the gradient over ``p``, with no second sigmoid. Under
    ``create_graph=True`` the gradient is the plain formula's, taken by
    autograd from the kept ``p`` (so every higher derivative, the sums'
    dependence on ``p`` included, is exact)."""
    rows = _rows_of(target, dtype)

    def kernel(pred: Tensor):
        probabilities = pred.new_empty(pred.shape, dtype=dtype)
        value, sums = _dice_value(_rows_of(pred, dtype), rows, rule, eps,
                                  naive_dice, True,
                                  probabilities.view(rows.shape))
        return value, probabilities, sums

    def grad_kernel(incoming: Tensor, probabilities: Tensor, sums,
                    in_place: bool):
        # the gradient is returned as a whole tensor, never as a view
        # (autograd refuses views made here once their base changes)
        base = probabilities.detach()
        gradient = base if in_place else torch.empty_like(base)
        flat = base.view(rows.shape)
        out = flat if in_place else gradient.view(rows.shape)
        _dice_gradient(flat, rows, *sums, rule, eps, naive_dice, True,
                       incoming, flat, out)
        return gradient

    def grad_formula(probabilities: Tensor, sums) -> Tensor:
        flat = probabilities.view(rows.shape)
        with torch.enable_grad():
            value = rule.apply(_dice_rows(flat, rows, eps, naive_dice))
            grad, = torch.autograd.grad(value.sum(), flat,
                                        create_graph=True)
        return (grad * flat * (1 - flat)).view(probabilities.shape)

    def hidden_backward(probabilities: Tensor, sums, grad: Tensor):
        return grad * probabilities * (1 - probabilities)

    return FromOutput(kernel, IncomingGradient(grad_kernel), grad_formula,
                      hidden_backward)


def _dice_function(name: str, sigmoid: bool, doc: str):
    """The public dice function of probabilities or (``sigmoid``) logits:
    mmdet's signature, the entry checks, then :func:`_dice`."""

    def loss(pred: Tensor, target: Tensor, weight: OptTensor = None,
             eps: float = 1e-3, reduction: str = 'mean',
             naive_dice: bool = False, avg_factor: AvgFactor = None,
             fast: Optional[bool] = None) -> Tensor:
        rule = Reduction(LOSS_NAME, weight, reduction, avg_factor)
        _check_inputs(pred, target, rule)
        return _dice(pred, target, rule, eps, naive_dice, sigmoid, fast)

    loss.__name__ = loss.__qualname__ = name
    loss.__doc__ = doc
    return loss


dice_loss = _dice_function(
    'dice_loss', False,
    """Dice loss of probabilities (see the module docstring).

    Args:
        pred (Tensor): probabilities (N, *).
        target (Tensor): targets (N, *), same number of elements per sample.
        weight (Tensor, optional): per-sample weight (N,).
        eps (float): smoothing term. Defaults to 1e-3.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        naive_dice (bool): first-power denominator instead of V-Net's.
        avg_factor (float | Tensor, optional): denominator of the mean.
        fast (bool, optional): ``None`` lets the dispatcher choose the
            path, ``False`` forces the plain formula, ``True`` the kernel
            at any size (unless :func:`mmloss.fast_paths` forbids it).

    Returns:
        Tensor: the loss, in ``pred``'s dtype: (N,) for ``'none'``, else a
        scalar.
    """)

sigmoid_dice_loss = _dice_function(
    'sigmoid_dice_loss', True,
    """:func:`dice_loss` of ``sigmoid(pred)``, the sigmoid fused in.

    Args: as :func:`dice_loss`, with ``pred`` the logits (N, *).
    """)


@MODELS.register_module()
class DiceLoss(BaseLoss):
    """Dice loss (MMDetection 3.3's twin, same argument order).

    Paper: Milletari et al., "V-Net", 3DV 2016, https://arxiv.org/abs/1606.04797

    Args:
        use_sigmoid (bool): activate with the sigmoid (the only activation
            defined; with ``activate=True`` and ``use_sigmoid=False`` the
            loss builds but its forward raises ``NotImplementedError``, as
            in MMDetection).
        activate (bool): activate ``pred`` inside; ``False`` when ``pred``
            already holds probabilities.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        naive_dice (bool): first-power denominator instead of V-Net's.
        loss_weight (float): factor applied to the loss.
        eps (float): smoothing term, > 0. Defaults to 1e-3.
    """

    def __init__(self, use_sigmoid: bool = True, activate: bool = True,
                 reduction: str = 'mean', naive_dice: bool = False,
                 loss_weight: float = 1.0, eps: float = 1e-3):
        super().__init__(reduction, loss_weight)
        # activate=True without use_sigmoid builds, as in MMDetection, and
        # raises at the call (forward), where MMDetection raises
        self.use_sigmoid = bool(use_sigmoid)
        self.activate = bool(activate)
        self.naive_dice = bool(naive_dice)
        if isinstance(eps, Real):
            eps = float(eps)
        self.eps = check_positive(self.loss_name, 'eps', eps)

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, use_sigmoid={self.use_sigmoid}, '
                f'activate={self.activate}, naive_dice={self.naive_dice}, '
                f'eps={self.eps}')

    def forward(self, pred: Tensor, target: Tensor, weight: OptTensor = None,
                reduction_override: OptStr = None,
                avg_factor: AvgFactor = None) -> Tensor:
        """Compute the loss.

        Args:
            pred (Tensor): logits (or probabilities if not ``activate``),
                (N, *).
            target (Tensor): targets (N, *), same number of elements.
            weight (Tensor, optional): per-sample weight (N,).
            reduction_override (str, optional): reduction for this call.
            avg_factor (float | Tensor, optional): denominator of the mean.

        Returns:
            Tensor: the weighted loss.
        """
        reduction = self.reduction if reduction_override is None else \
            self.resolve_reduction(reduction_override)
        if self.activate and not self.use_sigmoid:
            raise LossNotImplementedError(
                f'{self.loss_name}: activate=True needs use_sigmoid=True '
                '(the softmax form is not defined)')
        rule = Reduction(LOSS_NAME, weight, reduction, avg_factor)
        _check_inputs(pred, target, rule)
        loss = _dice(pred, target, rule, self.eps, self.naive_dice,
                     self.activate, None)
        return loss if self.loss_weight == 1.0 else self.loss_weight * loss
