"""Element-wise weighting and reduction, with MMDetection 3.3's exact rules.

* ``'none'`` returns the element-wise loss (times ``weight``) and ignores
  ``avg_factor``.
* ``'mean'`` without ``avg_factor`` is ``loss.mean()``; with it, it is
  ``loss.sum() / (avg_factor + eps)`` where ``eps`` is the float32 machine
  epsilon, so ``avg_factor=0`` gives ``sum / eps`` (zero for a zero sum).
* ``'sum'`` is ``loss.sum()``; ``'sum'`` with ``avg_factor`` raises.

One deliberate difference: the mean of an *empty* loss is ``0`` (connected to
the graph) instead of ``NaN``, so a batch without positives never poisons a
training run. An unknown reduction raises a ``ValueError`` that lists the
valid ones.
"""
import functools
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from .checks import check_reduction

FLOAT32_EPS = torch.finfo(torch.float32).eps


def reduce_loss(loss: Tensor, reduction: str) -> Tensor:
    """Reduce an element-wise loss by ``'none'``, ``'mean'`` or ``'sum'``.

    Args:
        loss (Tensor): element-wise loss of any shape.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.

    Returns:
        Tensor: ``loss`` itself, its mean (``0`` when empty) or its sum.
    """
    check_reduction('reduce_loss', reduction)
    if reduction == 'none':
        return loss
    if reduction == 'sum' or loss.numel() == 0:
        # sum() of an empty tensor is a zero that keeps the graph
        return loss.sum()
    return loss.mean()


def weight_reduce_loss(loss: Tensor,
                       weight: Optional[Tensor] = None,
                       reduction: str = 'mean',
                       avg_factor: Optional[Union[float, Tensor]] = None
                       ) -> Tensor:
    """Multiply by ``weight`` and reduce, averaging by ``avg_factor`` if given.

    ``mean`` with ``avg_factor`` is ``sum(loss * weight) / (avg_factor + eps)``
    with ``eps = torch.finfo(torch.float32).eps``.

    Args:
        loss (Tensor): element-wise loss.
        weight (Tensor, optional): element-wise weight, broadcast to ``loss``.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean.

    Returns:
        Tensor: the reduced loss.
    """
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        return reduce_loss(loss, reduction)
    check_reduction('weight_reduce_loss', reduction)
    if reduction == 'mean':
        return loss.sum() / (avg_factor + FLOAT32_EPS)
    if reduction == 'sum':
        raise ValueError('weight_reduce_loss: avg_factor can not be used with '
                         'reduction="sum"')
    return loss


def reduce_weighted_sum(loss_name: str, total: Tensor, count: int,
                        reduction: str,
                        avg_factor: Optional[Union[float, Tensor]] = None
                        ) -> Tensor:
    """``'mean'`` / ``'sum'`` from an already weighted sum of ``count`` losses.

    For fused kernels that produce ``total = sum(loss * weight)`` directly:
    the same rules as :func:`weight_reduce_loss` (``avg_factor`` divides by
    ``avg_factor + eps``, ``'sum'`` with ``avg_factor`` raises, the mean of
    nothing is ``0``), without the element-wise tensor.

    Args:
        loss_name (str): the loss named in an error.
        total (Tensor): the weighted sum, a scalar.
        count (int): how many element-wise losses it sums.
        reduction (str): ``'mean'`` or ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean.
    """
    check_reduction(loss_name, reduction)
    if reduction == 'none':
        raise ValueError(f'{loss_name}: reduce_weighted_sum cannot give '
                         f'reduction="none"')
    if reduction == 'sum':
        if avg_factor is not None:
            raise ValueError(f'{loss_name}: avg_factor can not be used with '
                             f'reduction="sum"')
        return total
    if avg_factor is not None:
        return total / (avg_factor + FLOAT32_EPS)
    # the mean of nothing is 0 (connected to the graph), not NaN
    return total / count if count > 0 else total


def weighted_loss(loss_func: Callable) -> Callable:
    """Turn an element-wise loss ``f(pred, target, **kw)`` into a weighted one.

    The wrapped function has the signature ``f(pred, target, weight=None,
    reduction='mean', avg_factor=None, **kw)`` and applies
    :func:`weight_reduce_loss` to the element-wise result.

    Example:
        >>> @weighted_loss
        ... def absolute_error(pred, target):
        ...     return (pred - target).abs()
        >>> absolute_error(torch.tensor([0., 2, 3]), torch.ones(3),
        ...                torch.tensor([1., 0, 1]), avg_factor=2)
        tensor(1.5000)
    """

    @functools.wraps(loss_func)
    def wrapper(pred: Tensor,
                target: Tensor,
                weight: Optional[Tensor] = None,
                reduction: str = 'mean',
                avg_factor: Optional[Union[float, Tensor]] = None,
                **kwargs) -> Tensor:
        loss = loss_func(pred, target, **kwargs)
        return weight_reduce_loss(loss, weight, reduction, avg_factor)

    return wrapper
