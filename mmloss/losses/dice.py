"""Dice loss for masks.

Milletari et al., "V-Net: Fully Convolutional Neural Networks for Volumetric
Medical Image Segmentation", 3DV 2016, https://arxiv.org/abs/1606.04797.

Per sample ``i``, over its flattened pixels, with probabilities ``p`` and
targets ``t`` (``a = sum p t``)::

    V-Net:  loss_i = 1 - 2a / ((sum p^2 + eps) + (sum t^2 + eps))
    naive:  loss_i = 1 - (2a + eps) / (sum p + sum t + eps)

:class:`DiceFunction` fuses the optional sigmoid, takes the three sums of
each sample from one batched 2 x 2 Gram matrix (no N x D product is built)
and computes the gradient in forward, saving only it (one N x D tensor).
Sums are taken in float32 at least.
"""
from numbers import Real
from typing import Optional, Union

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..checks import check_avg_factor, check_positive, check_tensor
from ..gradients import scale_saved_grad
from ..precision import compute_dtype
from ..reduction import weight_reduce_loss
from ..registry import MODELS
from .base import BaseLoss

__all__ = ['dice_loss', 'sigmoid_dice_loss', 'DiceFunction', 'DiceLoss']


def _dice_from_sums(inter: Tensor, pred_sum: Tensor, target_sum: Tensor,
                    eps: float, naive_dice: bool) -> Tensor:
    """``1 - dice`` from the row sums (``pred_sum``/``target_sum`` are sums
    of squares for V-Net)."""
    if naive_dice:
        return 1 - (2 * inter + eps) / (pred_sum + target_sum + eps)
    return 1 - 2 * inter / ((pred_sum + eps) + (target_sum + eps))


class DiceFunction(torch.autograd.Function):
    """Per-sample dice loss (N,) of (N, D) inputs, gradient in forward.

    The probabilities and a copy of the target go into one (2, N, D) buffer
    ``S``; one batched matrix product ``S_i S_i^T`` (a 2 x 2 Gram matrix per
    sample) gives all three sums ``sum p^2``, ``sum p t``, ``sum t^2`` in a
    single read (three row dot products would take three). With
    ``a = sum p t`` and ``S = sum p^2 + sum t^2 + 2 eps`` the gradient of the
    V-Net loss is ``(4a / S^2) p - (2 / S) t`` (naive: ``(2a + eps) / S^2
    - (2 / S) t``), times ``p (1 - p)`` through the sigmoid. It is written
    over the target copy in place and saved alone; backward scales it by the
    incoming gradient (:func:`~mmloss.gradients.scale_saved_grad`).

    Args (of ``apply``):
        pred (Tensor): (N, D) logits if ``sigmoid`` else probabilities.
        target (Tensor): (N, D) targets (no gradient).
        eps (float): smoothing term.
        naive_dice (bool): first-power denominator instead of V-Net's.
        sigmoid (bool): apply the sigmoid to ``pred`` first.

    Returns:
        Tensor: (N,) in float32 for half inputs, else ``pred``'s dtype.
    """

    @staticmethod
    def forward(ctx, pred: Tensor, target: Tensor, eps: float,
                naive_dice: bool, sigmoid: bool) -> Tensor:
        dtype = compute_dtype(pred)
        stacked = pred.new_empty((2, ) + tuple(pred.shape), dtype=dtype)
        prob, tgt = stacked[0], stacked[1]
        if sigmoid:
            torch.sigmoid(pred.to(dtype), out=prob)
        else:
            prob.copy_(pred)
        tgt.copy_(target)
        per_sample = stacked.transpose(0, 1)  # (N, 2, D), no copy
        gram = torch.bmm(per_sample, per_sample.transpose(1, 2))
        inter = gram[:, 0, 1]
        if naive_dice:
            pred_sum, target_sum = per_sample.sum(2).unbind(1)
        else:
            pred_sum, target_sum = gram[:, 0, 0], gram[:, 1, 1]
        loss = _dice_from_sums(inter, pred_sum, target_sum, eps, naive_dice)
        if ctx.needs_input_grad[0]:
            grad = tgt  # overwritten: the target copy is not needed again
            if naive_dice:
                # d/dp of -(2a + eps) / S, S = sum p + sum t + eps
                denom = pred_sum + target_sum + eps
                grad.mul_((-2 / denom)[:, None]).add_(
                    ((2 * inter + eps) / denom.square())[:, None])
            else:
                # d/dp of -2a / S, S = sum p^2 + sum t^2 + 2 eps
                denom = pred_sum + target_sum + 2 * eps
                grad.mul_((-2 / denom)[:, None]).addcmul_(
                    prob, (4 * inter / denom.square())[:, None])
            if sigmoid:
                # times p (1 - p), in place
                torch.ops.aten.sigmoid_backward.grad_input(
                    grad, prob, grad_input=grad)
            ctx.save_for_backward(grad)
            ctx.pred_dtype = pred.dtype
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        grad, = ctx.saved_tensors
        grad = scale_saved_grad(grad, grad_out)
        return grad.to(ctx.pred_dtype), None, None, None, None


def _dice_rows_plain(prob: Tensor, target: Tensor, eps: float,
                     naive_dice: bool) -> Tensor:
    """The formula with autograd (reference of :class:`DiceFunction`)."""
    dtype = compute_dtype(prob)
    prob, target = prob.to(dtype), target.to(dtype)
    inter = (prob * target).sum(1)
    if naive_dice:
        return _dice_from_sums(inter, prob.sum(1), target.sum(1), eps, True)
    return _dice_from_sums(inter, (prob * prob).sum(1),
                           (target * target).sum(1), eps, False)


def _reduce(rows: Tensor, weight, reduction, avg_factor, dtype) -> Tensor:
    if weight is not None:
        weight = weight.to(rows.dtype)
    return weight_reduce_loss(rows, weight, reduction, avg_factor).to(dtype)


def dice_loss(pred: Tensor,
              target: Tensor,
              weight: Optional[Tensor] = None,
              eps: float = 1e-3,
              reduction: str = 'mean',
              naive_dice: bool = False,
              avg_factor: Optional[Union[float, Tensor]] = None,
              fast: bool = True) -> Tensor:
    """Dice loss of probabilities (see the module docstring).

    Args:
        pred (Tensor): probabilities (N, *).
        target (Tensor): targets (N, *), same number of elements per sample.
        weight (Tensor, optional): per-sample weight (N,).
        eps (float): smoothing term. Defaults to 1e-3.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        naive_dice (bool): first-power denominator instead of V-Net's.
        avg_factor (float | Tensor, optional): denominator of the mean.
        fast (bool): analytic backward (:class:`DiceFunction`).

    Returns:
        Tensor: the reduced loss, dtype of ``pred``.
    """
    pred_2d, target_2d = pred.flatten(1), target.flatten(1)
    if fast and not target.requires_grad:
        rows = DiceFunction.apply(pred_2d, target_2d, eps, naive_dice, False)
    else:
        rows = _dice_rows_plain(pred_2d, target_2d, eps, naive_dice)
    return _reduce(rows, weight, reduction, avg_factor, pred.dtype)


def sigmoid_dice_loss(pred: Tensor,
                      target: Tensor,
                      weight: Optional[Tensor] = None,
                      eps: float = 1e-3,
                      reduction: str = 'mean',
                      naive_dice: bool = False,
                      avg_factor: Optional[Union[float, Tensor]] = None,
                      fast: bool = True) -> Tensor:
    """:func:`dice_loss` of ``sigmoid(pred)``, the sigmoid fused in.

    Args: as :func:`dice_loss`, with ``pred`` the logits (N, *).
    """
    pred_2d, target_2d = pred.flatten(1), target.flatten(1)
    if fast and not target.requires_grad:
        rows = DiceFunction.apply(pred_2d, target_2d, eps, naive_dice, True)
    else:
        rows = _dice_rows_plain(pred_2d.sigmoid(), target_2d, eps,
                                naive_dice)
    return _reduce(rows, weight, reduction, avg_factor, pred.dtype)


@MODELS.register_module()
class DiceLoss(BaseLoss):
    """Dice loss (MMDetection 3.3's twin, same argument order).

    Paper: Milletari et al., "V-Net", 3DV 2016, https://arxiv.org/abs/1606.04797

    Args:
        use_sigmoid (bool): activate with the sigmoid (the only activation
            defined; with ``activate=True`` it must be True).
        activate (bool): activate ``pred`` inside; ``False`` when ``pred``
            already holds probabilities.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        naive_dice (bool): first-power denominator instead of V-Net's.
        loss_weight (float): factor applied to the loss.
        eps (float): smoothing term, > 0. Defaults to 1e-3.
    """

    def __init__(self,
                 use_sigmoid: bool = True,
                 activate: bool = True,
                 reduction: str = 'mean',
                 naive_dice: bool = False,
                 loss_weight: float = 1.0,
                 eps: float = 1e-3):
        super().__init__(reduction, loss_weight)
        if activate and not use_sigmoid:
            # MMDetection raises NotImplementedError at the first forward
            raise ValueError(f'{self.loss_name}: activate=True needs '
                             'use_sigmoid=True (softmax is not defined)')
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

    def forward(self,
                pred: Tensor,
                target: Tensor,
                weight: Optional[Tensor] = None,
                reduction_override: Optional[str] = None,
                avg_factor: Optional[Union[float, Tensor]] = None) -> Tensor:
        """Compute the loss.

        Args:
            pred (Tensor): logits (or probabilities if not ``activate``),
                (N, *).
            target (Tensor): targets (N, *), same shape as ``pred``.
            weight (Tensor, optional): per-sample weight (N,).
            reduction_override (str, optional): reduction for this call.
            avg_factor (float | Tensor, optional): denominator of the mean.

        Returns:
            Tensor: the weighted loss.
        """
        reduction = self.resolve_reduction(reduction_override)
        check_avg_factor(self.loss_name, reduction, avg_factor)
        name = self.loss_name
        check_tensor(name, 'pred', pred)
        check_tensor(name, 'target', target)
        if pred.dim() < 2 or target.dim() < 1 or \
                pred.shape[0] != target.shape[0] or \
                pred.numel() != target.numel():
            raise ValueError(
                f'{name}: pred must be (N, *) and target hold the same '
                f'elements per sample, but got {tuple(pred.shape)} and '
                f'{tuple(target.shape)}')
        if not pred.is_floating_point():
            raise TypeError(f'{name}: pred must be floating point, but has '
                            f'dtype {pred.dtype}')
        if weight is not None:
            check_tensor(name, 'weight', weight)
            if weight.shape != pred.shape[:1]:
                raise ValueError(f'{name}: weight must have shape '
                                 f'{tuple(pred.shape[:1])} (one per sample), '
                                 f'but has shape {tuple(weight.shape)}')
        loss_fn = sigmoid_dice_loss if self.activate else dice_loss
        return self.apply_loss_weight(loss_fn(
            pred, target, weight, eps=self.eps, reduction=reduction,
            naive_dice=self.naive_dice, avg_factor=avg_factor))
