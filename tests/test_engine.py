"""The engine: the dispatcher and the gradient-in-forward Function."""
import dataclasses
import pathlib

import pytest
import torch

import mmloss
from mmloss.engine import dispatch
from mmloss.engine.functions import (GradientInForward, NegativeOf,
                                     gradient_in_forward)


# ---------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------
def test_fast_paths_as_a_function_stays_until_reset():
    mmloss.fast_paths(False)
    try:
        assert not mmloss.fast_paths_enabled()
        assert not dispatch.use_fast('L1Loss', torch.ones(3))
    finally:
        mmloss.fast_paths(None)
    assert mmloss.fast_paths_enabled()


@pytest.mark.parametrize('text,enabled', [('0', False), ('off', False),
                                          ('false', False), ('1', True),
                                          ('', True), ('on', True)])
def test_the_environment_sets_the_default(monkeypatch, text, enabled):
    monkeypatch.setenv(dispatch.FAST_PATHS_ENV, text)
    assert dispatch.fast_paths_enabled() is enabled


def test_the_environment_is_followed_call_after_call(monkeypatch):
    """The parsed switches are cached by the stored value, never stale:
    set, changed, unset, set to the same text again, and ``os.environ``
    replaced by a plain mapping (as some test set-ups do)."""
    import os
    from mmloss import checks
    name = dispatch.FAST_PATHS_ENV
    for text, enabled in (('0', False), ('1', True), ('off', False),
                          ('off', False), (None, True), ('no', False)):
        if text is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, text)
        assert dispatch.fast_paths_enabled() is enabled, text
        assert dispatch.env_flag(name, True) is enabled, text
    monkeypatch.setenv(checks.CHECK_FINITE_ENV, 'yes')
    assert checks.check_finite_enabled()
    monkeypatch.setenv(checks.CHECK_FINITE_ENV, '0')
    assert not checks.check_finite_enabled()
    monkeypatch.setattr(os, 'environ', {name: '0',
                                        checks.CHECK_FINITE_ENV: 'on'})
    assert not dispatch.fast_paths_enabled()
    assert checks.check_finite_enabled()
    os.environ[name] = 'on'
    assert dispatch.fast_paths_enabled()


def test_fast_paths_refuses_other_values():
    with pytest.raises(TypeError, match='fast_paths'):
        mmloss.fast_paths('no')


def test_pretend_device_switches_the_table_and_restores():
    x = torch.ones(2)
    assert dispatch.device_kind(x) == 'cpu' and dispatch.cpu_kernels(x)
    with dispatch.pretend_device('cuda'):
        assert dispatch.device_kind(x) == 'cuda'
        assert not dispatch.cpu_kernels(x)
        assert dispatch.block_rows(x) == dispatch.TUNING['cuda'].block_rows
    assert dispatch.device_kind(x) == 'cpu'
    with dispatch.pretend_device('xla'):  # unknown kinds: 'default'
        assert dispatch.tuning(x) is dispatch.TUNING['default']


def test_cpu_kernels_follow_the_switch():
    with mmloss.fast_paths(False):
        assert not dispatch.cpu_kernels(torch.ones(1))


def test_min_rows_sends_small_inputs_to_the_plain_formula(monkeypatch):
    entry = dataclasses.replace(dispatch.TUNING['cpu'],
                                min_rows={'SomeLoss': 100})
    monkeypatch.setitem(dispatch.TUNING, 'cpu', entry)
    x = torch.ones(1)
    assert not dispatch.use_fast('SomeLoss', x, rows=99)
    assert dispatch.use_fast('SomeLoss', x, rows=100)
    assert dispatch.use_fast('OtherLoss', x, rows=1)
    assert not dispatch.use_fast('SomeLoss')  # no tensor at all


def test_autocast_off_only_where_autocast_is_on():
    x = torch.ones(2, 2)
    with dispatch.autocast_off(x):
        assert not torch.is_autocast_enabled('cpu')
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert torch.is_autocast_enabled('cpu')
        with dispatch.autocast_off(x):
            assert not torch.is_autocast_enabled('cpu')
            assert torch.mm(x, x).dtype == torch.float32
        assert torch.is_autocast_enabled('cpu')


# ---------------------------------------------------------------------------
# GradientInForward
# ---------------------------------------------------------------------------
def _cube_kernel(needs, pred, target):
    """sum((pred - target)^3) with its slope, target's as NegativeOf."""
    d = pred - target
    return (d ** 3).sum(), (3 * d * d, NegativeOf(0)), None


def _cube_plain(pred, target):
    return ((pred - target) ** 3).sum()


def _pair(n=6, requires_target=True):
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(n, dtype=torch.float64, generator=gen)
    target = torch.randn(n, dtype=torch.float64, generator=gen)
    return pred.requires_grad_(), target.requires_grad_(requires_target)


def test_gradient_and_its_derivatives_are_exact():
    pred, target = _pair()

    def fn(p, t):
        return GradientInForward.apply(_cube_kernel, _cube_plain, p, t)

    assert torch.autograd.gradcheck(fn, (pred, target))
    assert torch.autograd.gradgradcheck(fn, (pred, target))


def test_create_graph_gradient_carries_a_graph():
    pred, target = _pair()
    out = GradientInForward.apply(_cube_kernel, _cube_plain, pred, target)
    grad, = torch.autograd.grad(out, pred, create_graph=True)
    assert grad.requires_grad
    hessian_row, = torch.autograd.grad(grad.sum(), pred)
    torch.testing.assert_close(hessian_row, 6 * (pred - target).detach())


def test_without_create_graph_the_plain_formula_is_not_run():
    pred, target = _pair()
    calls = []

    def plain(p, t):
        calls.append(1)
        return _cube_plain(p, t)

    GradientInForward.apply(_cube_kernel, plain, pred, target).backward()
    assert not calls
    torch.testing.assert_close(pred.grad, 3 * (pred - target).detach() ** 2)
    torch.testing.assert_close(target.grad,
                               -3 * (pred - target).detach() ** 2)


def test_retained_graph_gives_the_same_gradient_twice():
    pred, target = _pair(requires_target=False)
    out = GradientInForward.apply(_cube_kernel, _cube_plain, pred, target)
    first, = torch.autograd.grad(out, pred, retain_graph=True)
    second, = torch.autograd.grad(out, pred)
    assert torch.equal(first, second)


def test_tensor_scale_and_per_row_gradients():
    pred = torch.rand(5, 4, dtype=torch.float64, requires_grad=True)

    def kernel(needs, p):
        rows = (p ** 2).sum(1)
        return rows, (2 * p, ), torch.tensor(0.5, dtype=p.dtype)

    def plain(p):
        return (p ** 2).sum(1) * 1.0

    out = GradientInForward.apply(kernel, plain, pred)
    upstream = torch.arange(5, dtype=torch.float64)
    grad, = torch.autograd.grad(out, pred, upstream)
    torch.testing.assert_close(grad, 0.5 * 2 * pred.detach() *
                               upstream[:, None])


def test_gradient_in_forward_skips_the_function_without_grad():
    pred, target = _pair(requires_target=False)
    with torch.no_grad():
        out = gradient_in_forward(_cube_kernel, _cube_plain, pred, target)
    assert out.grad_fn is None
    out = gradient_in_forward(_cube_kernel, _cube_plain, pred, target)
    assert type(out.grad_fn).__name__ == 'GradientInForwardBackward'


def test_half_inputs_get_gradients_of_their_dtype():
    pred = torch.rand(4, dtype=torch.float16, requires_grad=True)

    def kernel(needs, p):
        x = p.float()
        return (x ** 2).sum(), (2 * x, ), None

    def plain(p):
        return (p.float() ** 2).sum()

    GradientInForward.apply(kernel, plain, pred).backward()
    assert pred.grad.dtype == torch.float16


# ---------------------------------------------------------------------------
# GradientInBackward
# ---------------------------------------------------------------------------
def _cube_of_difference(calls):
    """sum(d^3) of a difference the caller made: value in forward, slope
    in backward (written over the difference when the graph is freed)."""

    def value_kernel(d):
        return (d ** 3).sum(), (d.abs().amax(), )

    def grad_kernel(needs, extras, in_place, d):
        calls.append(in_place)
        assert extras[0] == d.abs().amax()
        slope = d.mul_(d).mul_(3) if in_place else d * d * 3
        return (slope, ), None

    def plain(d):
        return (d ** 3).sum()

    return value_kernel, grad_kernel, plain


def test_gradient_in_backward_is_exact_and_writes_over_its_own_tensor():
    from mmloss.engine.functions import (GradientInBackward,
                                         gradient_in_backward)
    pred, target = _pair()
    calls = []
    kernels = _cube_of_difference(calls)

    def fn(p, t):
        return GradientInBackward.apply(*kernels, (p - t) * 1)

    assert torch.autograd.gradcheck(fn, (pred, target))
    assert torch.autograd.gradgradcheck(fn, (pred, target))
    d = (pred - target).detach()
    out = gradient_in_backward(*kernels, pred - target)
    first, = torch.autograd.grad(out, pred, retain_graph=True)
    second, = torch.autograd.grad(out, pred)
    assert torch.equal(first, second)
    torch.testing.assert_close(second, 3 * d * d)
    assert calls[-2:] == [False, True]  # in place only when freed
    with torch.no_grad():
        assert gradient_in_backward(*kernels, pred - target).grad_fn is None
    out = gradient_in_backward(*kernels, pred - target)
    grad, = torch.autograd.grad(out, pred, create_graph=True)
    hvp, = torch.autograd.grad(grad.sum(), pred)
    torch.testing.assert_close(hvp, 6 * d)


# ---------------------------------------------------------------------------
# GradientFromOutput
# ---------------------------------------------------------------------------
def _log_sum_exp_rule(calls):
    """sum_i logsumexp(x_i) with the exponentials as the hidden output:
    gradient softmax(x), Hessian diag(p) - p p^T."""
    from mmloss.engine.functions import FromOutput

    def kernel(x):
        exps = x.exp()
        total = exps.sum(1)
        return total.log().sum(), exps, (total, )

    def grad_kernel(exps, extras, in_place):
        calls.append(in_place)
        grad = exps if in_place else exps.clone()
        return grad, extras[0].reciprocal()

    def grad_formula(exps, extras):
        return exps / exps.sum(1, keepdim=True)

    def hidden_backward(exps, extras, grad):
        return grad * exps

    return FromOutput(kernel, grad_kernel, grad_formula, hidden_backward)


def test_gradient_from_output_is_exact_to_every_order():
    from mmloss.engine.functions import (GradientFromOutput,
                                         gradient_from_output)
    calls = []
    rule = _log_sum_exp_rule(calls)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)

    def fn(t):
        return GradientFromOutput.apply(rule, t)[0]

    assert torch.autograd.gradcheck(fn, (x, ))
    assert torch.autograd.gradgradcheck(fn, (x, ))
    reference = torch.logsumexp(x, 1).sum()
    want, = torch.autograd.grad(reference, x, create_graph=True)
    out = gradient_from_output(rule, x)
    first, = torch.autograd.grad(out, x, retain_graph=True)
    second, = torch.autograd.grad(out, x)
    assert torch.equal(first, second)  # the first did not write over it
    torch.testing.assert_close(second, want.detach())
    assert calls[-2:] == [False, True]  # in place only when freed
    # create_graph: the gradient is connected to x; its HVP is exact
    direction = torch.randn(5, 4, dtype=torch.float64)
    got, = torch.autograd.grad(gradient_from_output(rule, x), x,
                               create_graph=True)
    assert got.requires_grad
    hvp, = torch.autograd.grad((got * direction).sum(), x)
    hvp_want, = torch.autograd.grad((want * direction).sum(), x)
    torch.testing.assert_close(hvp, hvp_want)
    with torch.no_grad():
        assert gradient_from_output(rule, x).grad_fn is None
    assert gradient_from_output(rule, x.detach()).grad_fn is None


def test_gradient_from_output_casts_the_gradient_to_the_input_dtype():
    from mmloss.engine.functions import gradient_from_output
    rule = _log_sum_exp_rule([])
    kernel = rule.kernel
    rule.kernel = lambda x: kernel(x.float())
    x = torch.randn(3, 4).half().requires_grad_()
    gradient_from_output(rule, x).backward()
    assert x.grad.dtype == torch.float16
    torch.testing.assert_close(x.grad.float(),
                               torch.softmax(x.detach().float(), 1),
                               rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------------------
# IncomingGradient: kernels that apply the incoming gradient themselves
# ---------------------------------------------------------------------------
def _row_squares(weighted_rows: bool):
    """Rows of ``w_i sum_j x_ij^2`` (per row, or their sum) through
    GradientInBackward with an IncomingGradient kernel: ``2 x_ij w_i g_i``,
    the incoming gradient ``g`` (a scalar or one value per row) folded into
    the per-row factor before the one pass."""
    from mmloss.engine.functions import IncomingGradient
    weight = torch.tensor([0.5, 2.0, -1.0], dtype=torch.float64)
    seen = []

    def value_kernel(x, t):
        rows = ((x - t) ** 2).sum(1) * weight
        return (rows if weighted_rows else rows.sum()), ()

    def grad_kernel(grad_output, needs, extras, x, t):
        seen.append(tuple(grad_output.shape))
        factor = (2 * weight * grad_output)[:, None]
        grad = (x - t).mul_(factor)
        return grad, NegativeOf(0)

    def plain(x, t):
        rows = ((x - t) ** 2).sum(1) * weight
        return rows if weighted_rows else rows.sum()

    return value_kernel, IncomingGradient(grad_kernel), plain, seen


@pytest.mark.parametrize('weighted_rows', [False, True])
def test_an_incoming_gradient_kernel_in_backward_is_exact(weighted_rows):
    from mmloss.engine.functions import GradientInBackward
    value_kernel, grad_kernel, plain, seen = _row_squares(weighted_rows)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)

    def fn(a, b):
        return GradientInBackward.apply(value_kernel, grad_kernel, plain, a,
                                        b)

    assert torch.autograd.gradcheck(fn, (x, t))
    assert torch.autograd.gradgradcheck(fn, (x, t))
    # the kernel got the incoming gradient as it is: a scalar or per row
    assert seen and set(seen) == {(3, ) if weighted_rows else ()}
    # create_graph: through the plain formula, so the HVP is exact
    out = fn(x, t)
    got, = torch.autograd.grad(out.sum(), x, create_graph=True)
    want, = torch.autograd.grad(plain(x, t).sum(), x, create_graph=True)
    torch.testing.assert_close(got, want)
    direction = torch.randn(3, 4, dtype=torch.float64)
    hvp, = torch.autograd.grad((got * direction).sum(), x)
    hvp_want, = torch.autograd.grad((want * direction).sum(), x)
    torch.testing.assert_close(hvp, hvp_want)


def test_an_incoming_gradient_kernel_from_output_is_exact():
    """The log-sum-exp rule with its per-row factor and the incoming
    gradient applied by the kernel: the engine scales nothing after it."""
    from mmloss.engine.functions import (FromOutput, GradientFromOutput,
                                         IncomingGradient)
    calls = []
    rule = _log_sum_exp_rule([])

    def grad_kernel(grad_output, exps, extras, in_place):
        calls.append((tuple(grad_output.shape), in_place))
        grad = exps if in_place else exps.clone()
        return grad.mul_((grad_output / extras[0])[:, None])

    def rows_kernel(x):
        exps = x.exp()
        total = exps.sum(1)
        return total.log(), exps, (total, )

    for kernel, shape in ((rule.kernel, ()), (rows_kernel, (5, ))):
        calls.clear()
        folded = FromOutput(kernel, IncomingGradient(grad_kernel),
                            rule.grad_formula, rule.hidden_backward)
        x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)

        def fn(t):
            return GradientFromOutput.apply(folded, t)[0]

        assert torch.autograd.gradcheck(fn, (x, ))
        assert torch.autograd.gradgradcheck(fn, (x, ))
        assert calls and {c[0] for c in calls} == {shape}
        calls.clear()
        fn(x).sum().backward()
        assert calls == [(shape, True)]  # over the kept output when freed


# ---------------------------------------------------------------------------
# layout: one job per file
# ---------------------------------------------------------------------------
MAX_LINES = 700


def test_no_package_file_is_over_the_line_limit():
    """No module under ``mmloss/`` grows past 700 lines (a file that does
    has taken on a second job: split it, keeping the old import path)."""
    root = pathlib.Path(mmloss.__file__).parent
    long_files = {
        str(path.relative_to(root)): count
        for path in sorted(root.rglob('*.py'))
        if (count := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long_files, f'over {MAX_LINES} lines: {long_files}'


@pytest.mark.parametrize('kind', ['cpu', 'cuda'])
def test_sum_of_products_in_dots_and_without(kind, monkeypatch):
    """Dots over blocks where the table says so (CPU), ``(x * y).sum()``
    elsewhere, non-contiguous and half inputs, and nothing: the same sum."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2500, generator=gen)
    y = torch.randn(2500, generator=gen)
    truth = (x.double() * y.double()).sum()
    entry = dispatch.TUNING[kind]
    block = entry.dot_block_elements
    assert (block > 0) == (kind == 'cpu')
    if block:
        monkeypatch.setitem(dispatch.TUNING, kind, dataclasses.replace(
            entry, dot_block_elements=1000))
    with dispatch.pretend_device(kind):
        for a, b in ((x, y), (x.view(50, 50).t(), y.view(50, 50).t()),
                     (x.double(), y.double())):
            got = dispatch.sum_of_products(a, b)
            assert got.dim() == 0 and got.dtype == a.dtype
            assert abs(got.double() - truth) <= 1e-6 * truth.abs()
        half = dispatch.sum_of_products(x.half(), y.half())
        assert half.dtype == torch.float16
        empty = dispatch.sum_of_products(x[:0], y[:0])
        assert empty.item() == 0


def test_sum_of_products_stays_as_exact_as_a_sum():
    """One table block of squares (what MSE's kernel sums) within 1e-6 of
    the float64 sum, as torch's own float32 sum is."""
    gen = torch.Generator().manual_seed(1)
    block = dispatch.TUNING['cpu'].dot_block_elements
    for count in (block, 3 * block + 5):
        x = torch.randn(count, generator=gen) + 0.5
        truth = (x.double() ** 2).sum()
        with dispatch.pretend_device('cpu'):
            got = dispatch.sum_of_products(x, x).double()
        assert abs(got - truth) <= 1e-6 * truth, (count, got, truth)
