"""The backward step shared by losses that compute their gradient in forward.

Many mmloss losses have a fast path whose forward pass computes the loss
*and* its gradient together (they share the expensive sigmoid, softmax or
power) and saves only that gradient
(:class:`mmloss.engine.functions.GradientInForward`). Their backward pass
is then always the same chain rule: the saved gradient times the incoming
one, which is a scalar (the loss was reduced in forward), one value per row
(a per-row loss), or one per element (an element-wise loss). This module is
that step, in one place.

When the running backward pass frees the graph afterwards (the default:
no ``retain_graph``/``create_graph``), nothing will read the saved gradient
again, so it is scaled in place and handed on: no second buffer of the
input's size is allocated (on the CPU a fresh buffer of tens of MB costs
about as much as the multiplication itself, in page faults). Otherwise a new
tensor is returned and the saved one is left intact for the next backward.
"""
from typing import Optional, Union

import torch
from torch import Tensor

__all__ = ['graph_is_kept', 'scale_saved_grad', 'per_row']


def graph_is_kept() -> bool:
    """Whether the running backward pass keeps the graph for another one.

    True with ``retain_graph=True`` or ``create_graph=True``, outside a
    backward pass, and wherever this torch cannot tell (the safe answer).
    """
    query = getattr(torch._C._autograd,
                    '_get_current_graph_task_keep_graph', None)
    if query is None:
        return True
    try:
        return bool(query())
    except RuntimeError:
        return True


def scale_saved_grad(grad: Tensor, grad_output: Tensor,
                     scale: Union[float, Tensor] = 1.0,
                     row_factor: Optional[Tensor] = None,
                     in_place: Optional[bool] = None) -> Tensor:
    """``grad * grad_output * scale`` (times ``row_factor`` per row).

    Scalars and per-row factors are folded together before they touch the
    big tensor, so the result costs one pass over ``grad``; ``grad`` itself
    is reused for the result unless the graph is kept (see the module
    docstring), so call this only on a tensor the Function saved for this
    purpose.

    Args:
        grad (Tensor): the saved gradient of the unscaled loss, (N, ...)
            with its rows along dim 0.
        grad_output (Tensor): the incoming gradient: a scalar, one value per
            row (N,), or ``grad``'s shape.
        scale (float | Tensor): a scalar factor the forward pass left out.
        row_factor (Tensor, optional): (N,) per-row factor the forward pass
            left out (for example a row weight).
        in_place (bool, optional): whether ``grad`` may be overwritten,
            where the caller already asked (``not graph_is_kept()``);
            ``None`` asks.

    Returns:
        Tensor: the gradient of the input, ``grad``'s shape and dtype.
    """
    small = None  # the scalar and per-row factors, folded together
    if not (isinstance(scale, (int, float)) and scale == 1):
        small = scale
    if row_factor is not None:
        row_factor = row_factor.to(grad.dtype)
        small = row_factor if small is None else row_factor * small
    if grad_output.dtype != grad.dtype:
        grad_output = grad_output.to(grad.dtype)
    if in_place is None:
        in_place = not graph_is_kept()
    if grad_output.shape != grad.shape:
        # a scalar or one value per row (N,): fold the small factors in
        # before the one pass over the big tensor
        factor = grad_output if small is None else grad_output * small
        factor = per_row(factor, grad)
        return grad.mul_(factor) if in_place else grad * factor
    out = grad.mul_(grad_output) if in_place else grad * grad_output
    if small is not None:
        out.mul_(per_row(small, grad)
                 if isinstance(small, Tensor) else small)
    return out


def per_row(factor: Tensor, grad: Tensor) -> Tensor:
    """A (N,) factor shaped to broadcast over the N rows of ``grad``; any
    other factor (a scalar) stays as it is."""
    if factor.dim() == 1 and grad.dim() > 1 and \
            factor.shape[0] == grad.shape[0]:
        return factor.reshape((-1, ) + (1, ) * (grad.dim() - 1))
    return factor
