"""The shared backward step of the gradient-in-forward Functions."""
import pytest
import torch

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
