"""The one place that decides in which dtype a loss computes.

Half-precision inputs (float16, bfloat16) compute in float32: box areas
overflow fp16 past 65504, squares of errors over 256 do too, and the small
epsilons of logs vanish. float32 and float64 compute as they are. Losses cast
their result back to the input dtype.
"""
from typing import Tuple

import torch
from torch import Tensor

__all__ = ['compute_dtype', 'upcast', 'restore_dtype', 'to_dtype']


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The common dtype of ``tensors``, at least float32."""
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
    """Cast a result computed by :func:`upcast` back to ``like``'s dtype."""
    return value if value.dtype == like.dtype else value.to(like.dtype)


def to_dtype(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """``tensor.to(dtype)``, skipping the call when it is a no-op (it runs
    on every step of losses that take well under a millisecond)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)
