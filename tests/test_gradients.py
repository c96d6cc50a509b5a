"""The shared backward step of the gradient-in-forward Functions, and the
helpers the families' tests use to hold the engine to its promises."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mmloss.gradients import graph_is_kept, scale_saved_grad
from tests.helpers import assert_close


class _Probe(torch.autograd.Function):
    """Records what graph_is_kept() says inside its backward and returns
    scale_saved_grad of a saved gradient of 3."""
    seen = []
    returned = []

    @staticmethod
    def forward(ctx, x):
        grad = torch.full_like(x, 3.0)
        ctx.save_for_backward(grad)
        return (3 * x).sum()

    @staticmethod
    def backward(ctx, grad_output):
        grad, = ctx.saved_tensors
        _Probe.seen.append(graph_is_kept())
        out = scale_saved_grad(grad, grad_output)
        _Probe.returned.append(out.data_ptr() == grad.data_ptr())
        return out


def test_graph_is_kept_follows_retain_and_create_graph():
    assert graph_is_kept()  # outside a backward pass: the safe answer
    _Probe.seen.clear()
    _Probe.returned.clear()
    x = torch.ones(4, requires_grad=True)
    y = _Probe.apply(x)
    g1, = torch.autograd.grad(y, x, retain_graph=True)
    g2, = torch.autograd.grad(y, x)
    g3, = torch.autograd.grad(_Probe.apply(x), x, create_graph=True)
    assert _Probe.seen == [True, False, True]
    # reused in place only when nothing reads the saved gradient again
    assert _Probe.returned == [False, True, False]
    for g in (g1, g2, g3):
        assert_close(g, torch.full((4, ), 3.0))


@pytest.mark.parametrize('kind', ['scalar', 'row', 'element'])
@pytest.mark.parametrize('scale', [1.0, 0.5])
@pytest.mark.parametrize('with_rows', [False, True])
def test_scale_saved_grad_matches_the_product(kind, scale, with_rows):
    g = torch.Generator().manual_seed(0)
    grad = torch.randn(6, 5, generator=g, dtype=torch.float64)
    grad_output = {
        'scalar': torch.tensor(1.7, dtype=torch.float64),
        'row': torch.randn(6, generator=g, dtype=torch.float64),
        'element': torch.randn(6, 5, generator=g, dtype=torch.float64),
    }[kind]
    rows = torch.rand(6, generator=g, dtype=torch.float64) if with_rows \
        else None
    upstream = grad_output[:, None] if kind == 'row' else grad_output
    expected = grad * upstream * scale
    if rows is not None:
        expected = expected * rows[:, None]
    out = scale_saved_grad(grad.clone(), grad_output, scale, rows)
    assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_scale_saved_grad_keeps_the_dtype_of_the_saved_gradient():
    grad = torch.ones(3, 2, dtype=torch.float16)
    out = scale_saved_grad(grad, torch.tensor(2.0), 0.25)
    assert out.dtype == torch.float16
    assert_close(out.float(), torch.full((3, 2), 0.5))


def test_one_value_per_row_of_a_single_column_gradient():
    """(N,) incoming gradient against an (N, 1) saved one: per row, not an
    element-wise product broadcast to (N, N)."""
    grad = torch.arange(1.0, 5.0).reshape(4, 1)
    upstream = torch.tensor([1.0, 0.0, 2.0, -1.0])
    out = scale_saved_grad(grad.clone(), upstream, 2.0)
    assert_close(out, (grad[:, 0] * upstream * 2)[:, None])


# --------------------------------------------------------------------------
# Helpers for the families' tests of the engine (imported by
# tests/test_regression.py, tests/test_ghm.py and tests/test_dice.py)
# --------------------------------------------------------------------------
#: Matrix-product operators (and what matmul/einsum decompose into): none
#: may touch a prediction or a gradient, whatever autocast would make of it.
MATMUL_FAMILY = frozenset({
    'mm', 'bmm', 'matmul', 'einsum', 'addmm', 'addbmm', 'baddbmm', 'mv',
    'addmv', 'linear', 'linalg_vecdot', '_addmm_activation'
})


class OpRecorder(TorchDispatchMode):
    """Records the name of every aten operator that runs inside it."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def derivatives(fn, inputs, seed=0):
    """``fn(*inputs)``, its gradients taken with ``create_graph=True`` (a
    random upstream gradient) and a Hessian-vector product, detached.

    Asserts that the gradients carry a graph (a gradient computed in
    forward used to come back as a constant)."""
    gen = torch.Generator().manual_seed(seed)
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*leaves)
    upstream = (torch.rand(out.shape, generator=gen, dtype=torch.float64)
                + 0.5).to(out)
    grads = torch.autograd.grad(out, leaves, upstream, create_graph=True)
    assert all(g.requires_grad for g in grads), 'a gradient without graph'
    directions = [torch.rand(x.shape, generator=gen, dtype=torch.float64)
                  .to(x) for x in leaves]
    product = sum((g * d).sum() for g, d in zip(grads, directions))
    hvp = torch.autograd.grad(product, leaves, allow_unused=True)
    hvp = [torch.zeros_like(x) if h is None else h
           for h, x in zip(hvp, leaves)]
    return [out.detach()] + [g.detach() for g in grads] + \
        [h.detach() for h in hvp]


def assert_same_derivatives(got, expected, rtol=1e-7, atol=1e-10,
                            what=''):
    """Every result of :func:`derivatives` close, on each one's scale."""
    labels = ['value'] + [f'grad {i}' for i in range((len(got) - 1) // 2)] \
        + [f'hvp {i}' for i in range((len(got) - 1) // 2)]
    for label, a, b in zip(labels, got, expected):
        scale = float(b.abs().max()) if b.numel() else 0.0
        assert_close(a, b.to(a.dtype), rtol=rtol,
                     atol=atol * max(scale, 1.0), what=f'{what} {label}')


def custom_functions(out):
    """Names of the custom autograd Functions in ``out``'s graph."""
    seen, stack, found = set(), [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            found.add(type(node).__name__)
        stack.extend(n for n, _ in node.next_functions)
    return found


def test_only_the_shared_backward_step_is_left():
    """The family Functions are gone: every gradient-in-forward path runs
    through mmloss.engine.functions.GradientInForward."""
    import mmloss.gradients as gradients
    assert set(gradients.__all__) == {'graph_is_kept', 'scale_saved_grad',
                                      'per_row'}
    assert not hasattr(gradients, 'PrecomputedGradientFunction')


def test_op_recorder_sees_a_matrix_product():
    with OpRecorder() as recorder:
        torch.ones(2, 3) @ torch.ones(3, 2)
    assert recorder.ops & MATMUL_FAMILY
