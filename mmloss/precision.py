"""The one place that decides in which dtype a loss computes and returns.

Half-precision inputs (float16, bfloat16) compute in float32: box areas
overflow fp16 past 65504, squares of errors over 256 do too, and the small
epsilons of logs vanish. float32 and float64 compute as they are.

What a loss returns (:func:`restore_loss`):

* the element-wise loss (``reduction='none'``) in the input dtype;
* a reduced loss (``'mean'``/``'sum'``) in the compute dtype, so float32
  for half inputs, as ``torch.autocast`` returns losses: a sum of fp16
  losses easily exceeds 65504, and casting it back would turn a finite
  loss into ``inf``.
"""
from typing import Tuple

import torch
from torch import Tensor

__all__ = [
    'compute_dtype', 'upcast', 'restore_dtype', 'loss_dtype',
    'restore_loss', 'to_dtype'
]


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The common dtype of ``tensors``, at least float32."""
    if len(tensors) == 1:
        # the common call, on every step: float32/float64 as they are
        dtype = tensors[0].dtype
        if dtype is torch.float32 or dtype is torch.float64:
            return dtype
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def upcast(*tensors: Tensor) -> Tuple[Tensor, ...]:
    """``tensors`` cast to their :func:`compute_dtype`.

    All tensors are promoted together, so a float16 ``pred`` with a float32
    ``target`` computes in float32.
    """
    dtype = compute_dtype(*tensors)
    return tuple(tensor.to(dtype) for tensor in tensors)


def restore_dtype(value: Tensor, like: Tensor) -> Tensor:
    """Cast an element-wise value computed by :func:`upcast` back to
    ``like``'s dtype (an intermediate such as an IoU, or a loss of
    ``reduction='none'``; a loss of any reduction: :func:`restore_loss`)."""
    return value if value.dtype == like.dtype else value.to(like.dtype)


def loss_dtype(like: Tensor, reduced: bool) -> torch.dtype:
    """The dtype of a loss of inputs like ``like``.

    ``like``'s own dtype for the element-wise loss; for a ``reduced``
    ('mean'/'sum') one its :func:`compute_dtype` (float32 for float16 and
    bfloat16, float32/float64 unchanged).
    """
    return compute_dtype(like) if reduced else like.dtype


def restore_loss(value: Tensor, like: Tensor, reduced: bool) -> Tensor:
    """A loss ``value`` computed by :func:`upcast`, in :func:`loss_dtype`.

    Every family returns its result through this: the element-wise loss
    goes back to ``like``'s dtype, a ``reduced`` one of half inputs stays
    in float32 (never an ``inf`` for a sum that float32 holds).

    Example:
        >>> half = torch.full((2, ), 300., dtype=torch.float16)
        >>> squares = upcast(half)[0] ** 2
        >>> restore_loss(squares.sum(), half, reduced=True)
        tensor(180000.)
    """
    dtype = like.dtype
    if value.dtype is dtype:  # the common case: float32 in, float32 out
        return value
    return to_dtype(value, loss_dtype(like, reduced))


def to_dtype(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """``tensor.to(dtype)``, skipping the call when it is a no-op (it runs
    on every step of losses that take well under a millisecond)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)
