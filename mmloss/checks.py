"""Argument and input checks shared by every loss family.

Each check names the loss, the argument and what it got, and raises
``ValueError`` or ``TypeError``. They read only shapes and dtypes (tensor
metadata), never tensor values, so they add no host sync on an accelerator.
"""
from numbers import Real
from typing import Optional, Sequence

import torch
from torch import Tensor

REDUCTIONS = ('none', 'mean', 'sum')


def check_reduction(loss_name: str, reduction: str,
                    argument: str = 'reduction') -> str:
    """Return ``reduction`` if it is one of :data:`REDUCTIONS`."""
    if reduction not in REDUCTIONS:
        raise ValueError(f'{loss_name}: {argument} must be one of '
                         f'{", ".join(map(repr, REDUCTIONS))}, '
                         f'but got {reduction!r}')
    return reduction


def check_loss_weight(loss_name: str, loss_weight) -> float:
    """Return ``loss_weight`` as a float if it is a non-negative number."""
    if isinstance(loss_weight, bool) or not isinstance(loss_weight, Real) \
            or not loss_weight >= 0:
        raise ValueError(f'{loss_name}: loss_weight must be a non-negative '
                         f'number, but got {loss_weight!r}')
    return float(loss_weight)


def check_positive(loss_name: str, argument: str, value,
                   allow_zero: bool = False) -> float:
    """Return ``value`` if it is a number > 0 (or >= 0 with ``allow_zero``)."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and (
        value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = '>= 0' if allow_zero else '> 0'
        raise ValueError(f'{loss_name}: {argument} must be a number {bound}, '
                         f'but got {value!r}')
    return value


def check_in_range(loss_name: str, argument: str, value, low: float,
                   high: float, high_inclusive: bool = False) -> float:
    """Return ``value`` if ``low <= value < high`` (``<= high`` if asked)."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and (
        low <= value <= high if high_inclusive else low <= value < high)
    if not ok:
        close = ']' if high_inclusive else ')'
        raise ValueError(f'{loss_name}: {argument} must lie in '
                         f'[{low}, {high}{close}, but got {value!r}')
    return value


def check_tensor(loss_name: str, argument: str, value) -> Tensor:
    """Return ``value`` if it is a tensor."""
    if not isinstance(value, Tensor):
        raise TypeError(f'{loss_name}: {argument} must be a torch.Tensor, '
                        f'but got {type(value).__name__}')
    return value


def check_same_shape(loss_name: str, pred: Tensor, target: Tensor,
                     names: Sequence[str] = ('pred', 'target')) -> None:
    """Raise unless ``pred`` and ``target`` have the same shape."""
    if pred.shape != target.shape:
        raise ValueError(f'{loss_name}: {names[0]} has shape '
                         f'{tuple(pred.shape)} but {names[1]} has shape '
                         f'{tuple(target.shape)}')


def check_box_shape(loss_name: str, pred: Tensor, target: Tensor,
                    coords: int = 4) -> None:
    """Raise unless ``pred`` and ``target`` are both (..., coords) boxes."""
    check_tensor(loss_name, 'pred', pred)
    check_tensor(loss_name, 'target', target)
    if pred.dim() == 0 or pred.shape[-1] != coords:
        raise ValueError(f'{loss_name}: pred must have shape (..., {coords}) '
                         f'but has shape {tuple(pred.shape)}')
    check_same_shape(loss_name, pred, target)


def check_integer_labels(loss_name: str, labels: Tensor,
                         argument: str = 'target') -> None:
    """Raise unless ``labels`` holds integers (class indices)."""
    if labels.dtype.is_floating_point or labels.dtype.is_complex \
            or labels.dtype == torch.bool:
        raise TypeError(f'{loss_name}: {argument} must hold integer class '
                        f'indices, but has dtype {labels.dtype}')


def check_weight_shape(loss_name: str, weight: Optional[Tensor],
                       loss_shape: Sequence[int],
                       argument: str = 'weight') -> None:
    """Raise unless ``weight`` broadcasts to the element-wise loss shape."""
    if weight is None:
        return
    check_tensor(loss_name, argument, weight)
    try:
        shape = torch.broadcast_shapes(weight.shape, tuple(loss_shape))
    except RuntimeError:
        shape = None
    if shape != tuple(loss_shape):
        raise ValueError(f'{loss_name}: {argument} has shape '
                         f'{tuple(weight.shape)}, which does not broadcast '
                         f'to the loss shape {tuple(loss_shape)}')
