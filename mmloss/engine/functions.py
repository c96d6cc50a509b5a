"""The one autograd Function for losses whose gradient is computed in forward.

Many mmloss losses share their expensive intermediates (a sigmoid, a
softmax, a power, a box's overlap) between the value and its gradient. Their
fast path is a *kernel*::

    kernel(needs, *inputs) -> (value, grads, scale)

run once in forward with autograd off: ``needs`` says which inputs want a
gradient, ``grads`` holds one entry per input (a tensor, ``None``, or
:class:`NegativeOf` for "minus another input's gradient", which losses of
``pred - target`` use to save one tensor instead of two) and ``scale`` is a
factor the kernel left out: a number, a 0-dim tensor, ``None``, or one
value per row (an (N,) tensor for (N, ...) gradients, which
:func:`~mmloss.gradients.scale_saved_grad` folds in per row: a row weight).
``value`` is element-wise, per row or reduced; each gradient is ``d value /
d input`` element by element, per row (a row's Jacobian) or of the reduced
value, so backward is always the chain rule of
:func:`mmloss.gradients.scale_saved_grad`: one pass over the saved gradient,
in place when the graph is freed.

Double backward: the saved gradient is a constant, so its own derivative
is unknown. When backward runs with grad mode on (``create_graph=True``),
:class:`GradientInForward` recomputes the loss through the family's *plain*
formula from the saved inputs (references to tensors the caller holds, not
copies) and differentiates that with ``create_graph=True``: the gradient,
and every derivative of it, equals the plain formula's. Without
``create_graph`` the plain formula is never run.

Keeping the inputs *and* the gradient costs two tensors of the input's size
where autograd's graph of the plain formula often keeps one. Where the
gradient is cheap to get back from the inputs (a loss of the difference
``pred - target``: its slope is one elementwise pass over the difference;
the softmax cross-entropy: one ``exp`` per logit given the row's
log-sum-exp), :class:`GradientInBackward` keeps only the inputs (and small
per-row statistics) and runs a *gradient kernel* in backward instead::

    value_kernel(*inputs) -> (value, extras)
    grad_kernel(needs, extras, in_place, *inputs) -> (grads, scale)

``extras`` is a tuple of tensors from forward that backward needs (a row's
log-sum-exp, say), saved with the inputs; ``in_place`` says the graph is
freed after this backward, so the kernel may write over a saved tensor
that nothing else holds (a difference the family made itself, never a
caller's input). Double backward is exact in the same way, through the
plain formula.
"""
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..gradients import graph_is_kept, scale_saved_grad
from ..precision import to_dtype

__all__ = ['GradientInForward', 'GradientInBackward', 'NegativeOf',
           'gradient_in_forward', 'gradient_in_backward']


class NegativeOf:
    """A gradient entry: minus the gradient of input ``index``."""
    __slots__ = ('index', )

    def __init__(self, index: int):
        self.index = index


class GradientInForward(torch.autograd.Function):
    """``value`` of a kernel that computes its gradient in forward.

    ``apply(kernel, plain, *inputs)``: see the module docstring. ``plain(
    *inputs)`` must return the same value (shape included) by autograd ops;
    it runs only for a backward with ``create_graph=True``. Non-tensor
    arguments are bound into ``kernel`` and ``plain`` by the caller.
    """

    @staticmethod
    def forward(ctx, kernel: Callable, plain: Callable, *inputs):
        needs = tuple(ctx.needs_input_grad[2:])
        value, grads, scale = kernel(needs, *inputs)
        saved, slots = [], []
        for index, (grad, need) in enumerate(zip(grads, needs)):
            if not need or grad is None:
                slots.append(None)
            elif isinstance(grad, NegativeOf):
                slots.append(grad)
            else:
                slots.append(len(saved))
                saved.append(grad)
        ctx.slots = slots
        ctx.num_grads = len(saved)
        if isinstance(scale, Tensor):
            ctx.scale_index = len(saved)
            saved.append(scale)
        else:
            ctx.scale_index = None
            ctx.scale = 1.0 if scale is None else scale
        # references for the exact double backward (no copies)
        ctx.inputs_at = len(saved)
        saved.extend(x if isinstance(x, Tensor) else None for x in inputs)
        ctx.save_for_backward(*saved)
        ctx.plain = plain
        ctx.dtypes = tuple(x.dtype if isinstance(x, Tensor) else None
                           for x in inputs)
        return value

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        saved = ctx.saved_tensors
        inputs = saved[ctx.inputs_at:]
        if torch.is_grad_enabled():
            return (None, None) + _plain_gradients(ctx.plain, inputs,
                                                   ctx.needs_input_grad[2:],
                                                   grad_output)
        scale = ctx.scale if ctx.scale_index is None else \
            saved[ctx.scale_index]
        grads = [None] * len(ctx.slots)
        for index, slot in enumerate(ctx.slots):
            if isinstance(slot, int):
                grads[index] = scale_saved_grad(saved[slot], grad_output,
                                                scale)
        for index, slot in enumerate(ctx.slots):
            if isinstance(slot, NegativeOf):
                grads[index] = grads[slot.index].neg()
        return (None, None) + tuple(
            None if g is None else to_dtype(g, dtype)
            for g, dtype in zip(grads, ctx.dtypes))


def _plain_gradients(plain: Callable, inputs: Sequence[Optional[Tensor]],
                     needs: Sequence[bool],
                     grad_output: Tensor) -> Tuple[Optional[Tensor], ...]:
    """Gradients of ``plain(*inputs)`` with a graph (double backward)."""
    wanted = [i for i, need in enumerate(needs) if need]
    with torch.enable_grad():
        value = plain(*inputs)
        got = torch.autograd.grad(value, [inputs[i] for i in wanted],
                                  grad_output.to(value.dtype),
                                  create_graph=True, allow_unused=True)
    grads = [None] * len(inputs)
    for i, grad in zip(wanted, got):
        grads[i] = torch.zeros_like(inputs[i]) if grad is None else grad
    return tuple(grads)


def gradient_in_forward(kernel: Callable, plain: Callable,
                        *inputs: Optional[Tensor]) -> Tensor:
    """Run ``kernel`` through :class:`GradientInForward` when a backward
    can come, else just its value (no gradient computed, nothing saved).
    """
    if torch.is_grad_enabled() and any(
            isinstance(x, Tensor) and x.requires_grad for x in inputs):
        return GradientInForward.apply(kernel, plain, *inputs)
    return kernel((False, ) * len(inputs), *inputs)[0]


class GradientInBackward(torch.autograd.Function):
    """``value`` of a loss whose gradient is computed in backward from the
    saved inputs (see the module docstring).

    ``apply(value_kernel, grad_kernel, plain, *inputs)``.
    """

    @staticmethod
    def forward(ctx, value_kernel: Callable, grad_kernel: Callable,
                plain: Callable, *inputs):
        value, extras = value_kernel(*inputs)
        ctx.num_extras = len(extras)
        ctx.save_for_backward(*extras, *(
            x if isinstance(x, Tensor) else None for x in inputs))
        ctx.grad_kernel, ctx.plain = grad_kernel, plain
        ctx.dtypes = tuple(x.dtype if isinstance(x, Tensor) else None
                           for x in inputs)
        return value

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        saved = ctx.saved_tensors
        extras, inputs = saved[:ctx.num_extras], saved[ctx.num_extras:]
        needs = ctx.needs_input_grad[3:]
        if torch.is_grad_enabled():
            return (None, None, None) + _plain_gradients(
                ctx.plain, inputs, needs, grad_output)
        in_place = not graph_is_kept()
        # detached views: a gradient written over a saved tensor must not
        # carry that tensor's graph
        grads, scale = ctx.grad_kernel(needs, extras, in_place, *(
            x if x is None else x.detach() for x in inputs))
        out = [None] * len(inputs)
        for index, (grad, need) in enumerate(zip(grads, needs)):
            if need and isinstance(grad, Tensor):
                out[index] = scale_saved_grad(grad, grad_output,
                                              1.0 if scale is None else scale)
        for index, (grad, need) in enumerate(zip(grads, needs)):
            if need and isinstance(grad, NegativeOf):
                out[index] = out[grad.index].neg()
        return (None, None, None) + tuple(
            None if g is None else to_dtype(g, dtype)
            for g, dtype in zip(out, ctx.dtypes))


def gradient_in_backward(value_kernel: Callable, grad_kernel: Callable,
                         plain: Callable, *inputs: Optional[Tensor]
                         ) -> Tensor:
    """Run through :class:`GradientInBackward` when a backward can come,
    else just the value kernel (nothing saved)."""
    if torch.is_grad_enabled() and any(
            isinstance(x, Tensor) and x.requires_grad for x in inputs):
        return GradientInBackward.apply(value_kernel, grad_kernel, plain,
                                        *inputs)
    return value_kernel(*inputs)[0]
