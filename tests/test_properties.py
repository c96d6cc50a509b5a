"""Property tests over every registered loss (hypothesis, derandomised).

For each loss a :class:`LossCase` says how to draw legitimate inputs; the
properties then hold for all of them:

* finite, non-negative value and finite gradients, empty inputs included;
* zero for a perfect prediction where the loss has one;
* box losses: invariant to translating both boxes, and to scaling both boxes
  where the loss is scale-invariant;
* ``'sum'`` equals the sum of ``'none'``; a weight of ones equals no weight;
  ``'mean'`` with ``avg_factor=k`` equals ``sum / k``.

A test also checks that every registered loss has a case, so a new loss
cannot skip these properties.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmloss.registry import MODELS
from tests.cases import CASES, REGISTERED, build, inputs, value
from tests.helpers import assert_close

PROPERTY_SETTINGS = settings(max_examples=15, deadline=None,
                             derandomize=True, database=None)
SEEDS = st.integers(0, 2**16)
SIZES = st.integers(0, 24)


def test_every_registered_loss_has_a_property_case():
    assert set(REGISTERED) <= set(CASES), sorted(set(REGISTERED) - set(CASES))


@pytest.mark.parametrize('name', REGISTERED)
@PROPERTY_SETTINGS
@given(seed=SEEDS, n=SIZES)
def test_finite_non_negative_with_finite_gradients(name, seed, n):
    case = CASES[name]
    args, kwargs = inputs(name, seed, n)
    for reduction in ('mean', 'none') if not case.sum_is_sum_of_none else (
            'mean', 'sum', 'none'):
        out = value(build(name), args, reduction_override=reduction,
                    **kwargs)
        assert torch.isfinite(out).all(), (reduction, out)
        assert (out >= -1e-12).all(), (reduction, out)
        grad, = torch.autograd.grad(out.sum(), args[0], allow_unused=True)
        assert grad is None or torch.isfinite(grad).all(), reduction


@pytest.mark.parametrize(
    'name', [n for n in REGISTERED if CASES.get(n) and CASES[n].perfect])
@PROPERTY_SETTINGS
@given(seed=SEEDS, n=st.integers(1, 24))
def test_perfect_prediction_gives_the_minimum(name, seed, n):
    args, kwargs = CASES[name].make(seed, n)
    perfect = CASES[name].perfect(args)
    out = value(build(name), perfect, reduction_override='none', **kwargs)
    assert out.min().item() >= CASES[name].perfect_value - 1e-12
    assert out.max().item() <= (CASES[name].perfect_value +
                                CASES[name].perfect_tolerance), out


@pytest.mark.parametrize('name',
                         [n for n in REGISTERED if CASES.get(n) and CASES[n].box])
@PROPERTY_SETTINGS
@given(seed=SEEDS, n=st.integers(1, 24),
       offset=st.floats(-1000, 1000, allow_nan=False),
       # boxes stay >= 0.5 px wide, so eps / area stays below ~1e-5
       scale=st.floats(0.5, 20, allow_nan=False))
def test_box_losses_are_translation_and_scale_invariant(name, seed, n,
                                                         offset, scale):
    args, kwargs = CASES[name].make(seed, n)
    pred, target, rest = args[0], args[1], args[2:]
    reference = value(build(name), args, reduction_override='none',
                      **kwargs)
    moved = value(build(name), (pred + offset, target + offset) + rest,
                  reduction_override='none', **kwargs)
    assert_close(moved, reference, rtol=1e-6, atol=1e-9,
                 what=f'{name} translated by {offset}')
    if CASES[name].scale_invariant:
        scaled = value(build(name), (pred * scale, target * scale) + rest,
                       reduction_override='none', **kwargs)
        assert_close(scaled, reference, rtol=1e-5, atol=1e-8,
                     what=f'{name} scaled by {scale}')


@pytest.mark.parametrize('name', REGISTERED)
@PROPERTY_SETTINGS
@given(seed=SEEDS, n=st.integers(1, 24))
def test_reductions_weights_and_avg_factor_agree(name, seed, n):
    case = CASES[name]
    args, kwargs = CASES[name].make(seed, n)
    if case.sum_is_sum_of_none:
        none = value(build(name), args, reduction_override='none', **kwargs)
        total = value(build(name), args, reduction_override='sum', **kwargs)
        assert_close(total.sum(), none.sum(), rtol=1e-9, atol=1e-12,
                     what=f'{name}: sum vs none')
    if case.weight_shape is None:
        return
    ones = torch.ones(case.weight_shape(n), dtype=torch.float64)
    weighted = value(build(name), args, weight=ones, **kwargs)
    plain = value(build(name), args, **kwargs)
    assert_close(weighted, plain, rtol=1e-9, atol=1e-12,
                 what=f'{name}: weight of ones')
    averaged = value(build(name), args, avg_factor=n, **kwargs)
    assert_close(averaged, total.sum() / n, rtol=1e-6, atol=1e-12,
                 what=f'{name}: avg_factor')


def _cast_floats(args, dtype):
    return tuple(
        a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point()
        else tuple(_cast_floats(a, dtype)) if isinstance(a, tuple) else a
        for a in args)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('name', REGISTERED)
def test_half_precision_inputs_stay_finite(name, dtype):
    # Boxes a few hundred pixels wide overflow fp16 areas (65504) in mmdet.
    args, kwargs = CASES[name].make(7, 16)
    if CASES[name].box:
        args = (args[0] * 6, args[1] * 6) + args[2:]
    args = _cast_floats(args, dtype)
    pred = args[0].requires_grad_()
    loss = MODELS.build(dict(type=name, **CASES[name].cfg))
    out = value(loss, args, **kwargs)
    assert out.dtype in (dtype, torch.float32), out.dtype
    assert torch.isfinite(out).all(), out
    grad, = torch.autograd.grad(out.sum(), pred)
    assert grad.dtype == dtype
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize('name', REGISTERED)
def test_finite_under_autocast(name):
    args, kwargs = CASES[name].make(3, 16)
    args = _cast_floats(args, torch.float32)
    pred = args[0].requires_grad_()
    loss = MODELS.build(dict(type=name, **CASES[name].cfg))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = value(loss, args, **kwargs)
    assert torch.isfinite(out).all(), out
    grad, = torch.autograd.grad(out.float().sum(), pred)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize('name',
                         [n for n in REGISTERED
                          if CASES.get(n) and CASES[n].weight_shape])
@pytest.mark.parametrize('reduction,avg_factor', [
    ('mean', None), ('mean', 0), ('mean', 5.0), ('sum', None),
    ('none', 3.0)])
def test_empty_inputs_with_weights_give_a_connected_zero(
        name, reduction, avg_factor):
    args, kwargs = inputs(name, 0, 0)
    weight = torch.zeros(CASES[name].weight_shape(0), dtype=torch.float64)
    out = value(build(name), args, weight=weight, avg_factor=avg_factor,
                reduction_override=reduction, **kwargs)
    assert out.numel() == 0 or (out == 0).all()
    out.sum().backward()
    assert args[0].grad is not None and args[0].grad.shape == args[0].shape


@pytest.mark.parametrize('name',
                         [n for n in REGISTERED
                          if CASES.get(n) and CASES[n].weight_shape])
def test_all_zero_weights_give_a_connected_zero(name):
    args, kwargs = inputs(name, 1, 12)
    weight = torch.zeros(CASES[name].weight_shape(12), dtype=torch.float64)
    for avg_factor in (None, 0, 4.0):
        out = value(build(name), args, weight=weight, avg_factor=avg_factor,
                    **kwargs)
        assert out.item() == 0.0
        grad, = torch.autograd.grad(out, args[0])
        assert (grad == 0).all()


@pytest.mark.parametrize('name', REGISTERED)
def test_backward_through_a_retained_graph_repeats_the_gradient(name):
    """Fast paths reuse their saved gradient in place only when the graph is
    freed: with ``retain_graph`` every backward must see the same saved
    state, and the last (freeing) one must agree too."""
    stateless = build(name)
    args, kwargs = inputs(name, 3, 9)
    upstream = None
    grads = []
    out = value(stateless, args, reduction_override='none', **kwargs)
    upstream = torch.rand(out.shape, dtype=out.dtype,
                          generator=torch.Generator().manual_seed(4))
    for retain in (True, True, False):
        grad, = torch.autograd.grad((out * upstream).sum(), args[0],
                                    retain_graph=retain, allow_unused=True)
        grads.append(grad)
    if grads[0] is None:
        return
    for grad in grads[1:]:
        assert torch.equal(grad, grads[0]), name


def _strided_copy(tensor):
    """The same values in a non-contiguous layout (column-major for 2-D and
    up, every other element of a buffer for 1-D)."""
    if tensor.dim() >= 2:
        return tensor.detach().transpose(0, -1).contiguous().transpose(0, -1)
    return torch.stack([tensor.detach()] * 2, dim=1)[:, 0]


@pytest.mark.parametrize('name', REGISTERED)
@pytest.mark.parametrize('reduction', ['none', 'mean'])
def test_non_contiguous_inputs_give_the_same_result(name, reduction):
    """Heads hand over permuted or sliced tensors: a prediction and target
    stored non-contiguously give the contiguous result and gradient."""
    args, kwargs = inputs(name, 5, 12)
    results = []
    for layout in (lambda t: t.detach().clone(), _strided_copy):
        laid = tuple(layout(a) if isinstance(a, torch.Tensor) and
                     a.dtype.is_floating_point else a for a in args)
        laid[0].requires_grad_()
        if laid[0].dim() >= 2 and layout is _strided_copy:
            assert not laid[0].is_contiguous()
        out = value(build(name), laid, reduction_override=reduction,
                    **kwargs)
        grad, = torch.autograd.grad(out.sum(), laid[0], allow_unused=True)
        results.append((out.detach(), grad))
    (out, grad), (ref, ref_grad) = results[1], results[0]
    assert_close(out, ref, rtol=1e-10, atol=1e-12, what=f'{name} value')
    if ref_grad is not None:
        assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12,
                     what=f'{name} grad')
