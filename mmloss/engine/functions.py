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

from ..gradients import graph_is_kept, per_row, scale_saved_grad
from ..precision import to_dtype

__all__ = ['GradientInForward', 'GradientInBackward', 'GradientFromOutput',
           'FromOutput', 'NegativeOf', 'IncomingGradient',
           'gradient_in_forward', 'gradient_in_backward',
           'gradient_from_output']


class NegativeOf:
    """A gradient entry: minus the gradient of input ``index``."""
    __slots__ = ('index', )

    def __init__(self, index: int):
        self.index = index


class IncomingGradient:
    """A gradient kernel that takes the incoming gradient and folds it into
    factors it applies anyway, so that no pass scales the gradient after
    it (a gradient built from per-row sums: the incoming gradient, a
    scalar or one value per row, joins the per-row factors for free).

    For :class:`GradientInBackward`: ``kernel(grad_output, needs, extras,
    *inputs) -> grads``; for :class:`GradientFromOutput`:
    ``kernel(grad_output, hidden, extras, in_place) -> grad``. Each
    gradient is the input's whole gradient: ``grad_output`` and the
    reduction's factor already applied.
    """
    __slots__ = ('kernel', )

    def __init__(self, kernel: Callable):
        self.kernel = kernel


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
        front, slots = [], []
        for grad, need in zip(grads, needs):
            if not need or grad is None:
                slots.append(None)
            elif isinstance(grad, NegativeOf):
                slots.append(grad)
            else:
                slots.append(len(front))
                front.append(grad)
        ctx.slots = slots
        if isinstance(scale, Tensor):
            ctx.scale_index = len(front)
            front.append(scale)
        else:
            ctx.scale_index, ctx.scale = None, scale
        _keep(ctx, plain, front, inputs)
        return value

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        saved = ctx.saved_tensors
        if torch.is_grad_enabled():
            return (None, None) + _plain_gradients(
                ctx.plain, saved[ctx.inputs_at:], ctx.needs_input_grad[2:],
                grad_output)
        scale = ctx.scale if ctx.scale_index is None else \
            saved[ctx.scale_index]
        grads = [saved[slot] if isinstance(slot, int) else slot
                 for slot in ctx.slots]
        return (None, None) + _chain(ctx, grads, ctx.needs_input_grad[2:],
                                     grad_output, scale)


def _keep(ctx, plain: Callable, front: Sequence[Tensor],
          inputs: Sequence) -> None:
    """Save ``front`` and then references to the tensor ``inputs`` (for the
    exact double backward; no copies); remember ``plain`` and the inputs'
    dtypes."""
    ctx.inputs_at = len(front)
    # loops, not generators: this runs on every loss call
    saved, dtypes = list(front), []
    for x in inputs:
        if isinstance(x, Tensor):
            saved.append(x)
            dtypes.append(x.dtype)
        else:
            saved.append(None)
            dtypes.append(None)
    ctx.save_for_backward(*saved)
    ctx.plain = plain
    ctx.dtypes = dtypes


def _chain(ctx, grads: Sequence, needs: Sequence[bool], grad_output: Tensor,
           scale, in_place: Optional[bool] = None
           ) -> Tuple[Optional[Tensor], ...]:
    """The inputs' gradients from the loss's: each tensor in ``grads``
    times ``grad_output`` and ``scale`` (:func:`scale_saved_grad`, in place
    when the graph is freed: ``in_place``, where the caller asked),
    :class:`NegativeOf` entries resolved, each cast to its input's dtype."""
    scale = 1.0 if scale is None else scale
    out = []
    for grad, need in zip(grads, needs):
        out.append(scale_saved_grad(grad, grad_output, scale,
                                    in_place=in_place)
                   if need and isinstance(grad, Tensor) else None)
    return _resolve(ctx, grads, needs, out)


def _resolve(ctx, grads: Sequence, needs: Sequence[bool],
             out: list) -> Tuple[Optional[Tensor], ...]:
    """``out`` (the inputs' gradients) with the :class:`NegativeOf` entries
    of ``grads`` resolved, each cast to its input's dtype."""
    for index, (grad, need) in enumerate(zip(grads, needs)):
        if need and isinstance(grad, NegativeOf):
            out[index] = out[grad.index].neg()
    for index, dtype in enumerate(ctx.dtypes):
        grad = out[index]
        if grad is not None and dtype is not None and grad.dtype != dtype:
            out[index] = grad.to(dtype)
    return tuple(out)


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
    if torch.is_grad_enabled():
        for x in inputs:
            if isinstance(x, Tensor) and x.requires_grad:
                return GradientInForward.apply(kernel, plain, *inputs)
    return kernel((False, ) * len(inputs), *inputs)[0]


class GradientInBackward(torch.autograd.Function):
    """``value`` of a loss whose gradient is computed in backward from the
    saved inputs (see the module docstring).

    ``apply(value_kernel, grad_kernel, plain, *inputs)``; ``grad_kernel``
    may be an :class:`IncomingGradient`.
    """

    @staticmethod
    def forward(ctx, value_kernel: Callable, grad_kernel: Callable,
                plain: Callable, *inputs):
        value, extras = value_kernel(*inputs)
        ctx.grad_kernel = grad_kernel
        _keep(ctx, plain, extras, inputs)
        return value

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        saved = ctx.saved_tensors
        extras, inputs = saved[:ctx.inputs_at], saved[ctx.inputs_at:]
        needs = ctx.needs_input_grad[3:]
        if torch.is_grad_enabled():
            return (None, None, None) + _plain_gradients(
                ctx.plain, inputs, needs, grad_output)
        # detached views: a gradient written over a saved tensor must not
        # carry that tensor's graph (a loop: this runs on every call)
        detached = []
        for x in inputs:
            detached.append(x if x is None else x.detach())
        if isinstance(ctx.grad_kernel, IncomingGradient):
            grads = ctx.grad_kernel.kernel(grad_output, needs, extras,
                                           *detached)
            out = []
            for g, need in zip(grads, needs):
                out.append(g if need and isinstance(g, Tensor) else None)
            return (None, None, None) + _resolve(ctx, grads, needs, out)
        in_place = not graph_is_kept()
        grads, scale = ctx.grad_kernel(needs, extras, in_place, *detached)
        return (None, None, None) + _chain(ctx, grads, needs, grad_output,
                                           scale, in_place)


def gradient_in_backward(value_kernel: Callable, grad_kernel: Callable,
                         plain: Callable, *inputs: Optional[Tensor]
                         ) -> Tensor:
    """Run through :class:`GradientInBackward` when a backward can come,
    else just the value kernel (nothing saved)."""
    if torch.is_grad_enabled():
        for x in inputs:
            if isinstance(x, Tensor) and x.requires_grad:
                return GradientInBackward.apply(value_kernel, grad_kernel,
                                                plain, *inputs)
    return value_kernel(*inputs)[0]


class GradientFromOutput(torch.autograd.Function):
    """``value`` of a loss whose gradient comes from a tensor its value
    kernel makes anyway (a softmax's exponentials), kept instead of the
    input: the input's memory is not held until backward and the tensor is
    not computed twice.

    ``apply(rule, *inputs)`` with ``rule`` a :class:`FromOutput`. The kernel
    returns ``(value, hidden, extras)``: ``hidden`` is a differentiable
    function of the first input alone (given the constant ``extras``), which
    the Function returns as a second output and saves as an output. Only the
    first input gets a gradient.

    Backward without a graph runs ``rule.grad_kernel`` (in place over
    ``hidden`` when the graph is freed) and one scaling pass. With
    ``create_graph=True`` it computes the same gradient by differentiable
    ops of the saved output (``rule.grad_formula``): the result is
    connected, through ``hidden``, to this Function and so to the input,
    and a second backward reaches ``hidden``'s own derivative
    (``rule.hidden_backward``), so derivatives of every order are those of
    the formula.
    """

    @staticmethod
    def forward(ctx, rule: 'FromOutput', *inputs):
        value, hidden, extras = rule.kernel(*inputs)
        ctx.set_materialize_grads(False)
        ctx.rule = rule
        ctx.dtype = inputs[0].dtype
        ctx.save_for_backward(hidden, *extras)
        return value, hidden

    @staticmethod
    def backward(ctx, grad_value: Optional[Tensor],
                 grad_hidden: Optional[Tensor]):
        hidden, *extras = ctx.saved_tensors
        rule = ctx.rule
        grad = None
        if grad_hidden is not None:
            # first: the fast kernel below may write over ``hidden``
            grad = rule.hidden_backward(hidden, extras, grad_hidden)
        if grad_value is not None:
            if torch.is_grad_enabled():
                part = rule.grad_formula(hidden, extras)
                part = part * per_row(grad_value.to(part.dtype), part)
            elif isinstance(rule.grad_kernel, IncomingGradient):
                # detached: the gradient written over the kept output
                # must not carry that output's graph
                part = rule.grad_kernel.kernel(grad_value, hidden.detach(),
                                               extras, not graph_is_kept())
            else:
                part, scale = rule.grad_kernel(hidden.detach(), extras,
                                               not graph_is_kept())
                part = scale_saved_grad(part, grad_value, scale)
            grad = part if grad is None else grad + part
        none = (None, ) * (len(ctx.needs_input_grad) - 2)
        if grad is None:
            return (None, None) + none
        return (None, to_dtype(grad, ctx.dtype)) + none


class FromOutput:
    """The four functions of a :class:`GradientFromOutput` loss.

    Attributes:
        kernel: ``kernel(*inputs) -> (value, hidden, extras)``.
        grad_kernel: ``grad_kernel(hidden, extras, in_place) -> (grad,
            scale)``, ``d value / d input`` without the incoming gradient
            (``scale`` as for :class:`GradientInForward`), writing over
            ``hidden`` only where ``in_place``; or an
            :class:`IncomingGradient`, which applies the incoming gradient
            itself.
        grad_formula: ``grad_formula(hidden, extras) -> grad``, the same by
            differentiable ops of ``hidden``.
        hidden_backward: ``hidden_backward(hidden, extras, grad_hidden) ->
            grad``, the vector-Jacobian product of ``hidden`` with respect
            to the input, by differentiable ops.
    """
    __slots__ = ('kernel', 'grad_kernel', 'grad_formula', 'hidden_backward')

    def __init__(self, kernel: Callable, grad_kernel: Callable,
                 grad_formula: Callable, hidden_backward: Callable):
        self.kernel = kernel
        self.grad_kernel = grad_kernel
        self.grad_formula = grad_formula
        self.hidden_backward = hidden_backward


def gradient_from_output(rule: FromOutput, *inputs: Optional[Tensor]
                         ) -> Tensor:
    """Run ``rule`` through :class:`GradientFromOutput` when a backward can
    come (then only the first input may need a gradient), else just its
    kernel's value (nothing kept)."""
    if torch.is_grad_enabled() and inputs[0].requires_grad:
        return GradientFromOutput.apply(rule, *inputs)[0]
    return rule.kernel(*inputs)[0]
