"""DiceLoss against MMDetection 3.3."""
import pytest
import torch

import mmloss
from mmloss.engine import dispatch
from mmloss.losses.dice import dice_loss, sigmoid_dice_loss
from mmloss.reduction import FLOAT32_EPS
from tests.helpers import assert_close
from tests.test_gradients import (MATMUL_FAMILY, OpRecorder,
                                  assert_same_derivatives, custom_functions,
                                  derivatives)

REDUCTIONS = ('none', 'mean', 'sum')
VARIANTS = [dict(naive_dice=False), dict(naive_dice=True),
            dict(naive_dice=True, eps=1.0), dict(activate=False)]


def masks(generator, n=12, shape=(6, 7), dtype=torch.float32):
    logits = torch.randn(n, *shape, generator=generator, dtype=dtype) * 2
    target = (torch.rand(n, *shape, generator=generator) > 0.6).to(dtype)
    return logits, target


def compare(ref, ours, pred, target, *args, grad_atol=1e-6, **kwargs):
    """Same value and gradient, on the CPU's paths and on the kernel (the
    'cuda' entry of the table has no size threshold)."""
    xa = pred.clone().requires_grad_()
    a = ref(xa, target, *args, **kwargs)
    proj = torch.linspace(-1, 1, a.numel()).reshape(a.shape)
    (a * proj).sum().backward()
    for kind in ('cpu', 'cuda'):
        xb = pred.clone().requires_grad_()
        with dispatch.pretend_device(kind):
            b = ours(xb, target, *args, **kwargs)
        assert b.shape == a.shape
        assert_close(b, a, what=f'{kind} value')
        (b * proj).sum().backward()
        assert_close(xb.grad, xa.grad, atol=grad_atol, what=f'{kind} grad')


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('reduction', REDUCTIONS)
@pytest.mark.parametrize('variant', VARIANTS, ids=str)
def test_parity_grid(mmdet_losses, seed, reduction, variant):
    g = torch.Generator().manual_seed(seed)
    logits, target = masks(g)
    pred = logits if variant.get('activate', True) else logits.sigmoid()
    weight = torch.rand(len(pred), generator=g)
    kwargs = dict(reduction=reduction, loss_weight=1.5, **variant)
    ref, ours = mmdet_losses.DiceLoss(**kwargs), mmloss.DiceLoss(**kwargs)
    compare(ref, ours, pred, target)
    compare(ref, ours, pred, target, weight)
    if reduction == 'mean':
        compare(ref, ours, pred, target, weight, avg_factor=5.0)
        # avg_factor=0 divides by the float32 eps: gradients scale by 1e7
        compare(ref, ours, pred, target, weight, avg_factor=0,
                grad_atol=1e-6 / FLOAT32_EPS)
    for override in REDUCTIONS:
        compare(ref, ours, pred, target, weight, reduction_override=override)


def test_parity_argument_order(mmdet_losses):
    """forward(pred, target, weight, reduction_override, avg_factor)."""
    g = torch.Generator().manual_seed(3)
    pred, target = masks(g)
    weight = torch.rand(len(pred), generator=g)
    compare(mmdet_losses.DiceLoss(), mmloss.DiceLoss(), pred, target, weight,
            'mean', 3.0)
    ours = mmloss.DiceLoss(True, True, 'sum', True, 2.0, 0.5)
    ref = mmdet_losses.DiceLoss(True, True, 'sum', True, 2.0, 0.5)
    compare(ref, ours, pred, target)


def test_parity_realistic_size(mmdet_losses):
    """Mask2Former-like: 200 queries x 12544 sampled points."""
    g = torch.Generator().manual_seed(4)
    pred = torch.randn(200, 12544, generator=g)
    target = (torch.rand(200, 12544, generator=g) > 0.5).float()
    for kwargs in (dict(), dict(naive_dice=True, eps=1.0)):
        compare(mmdet_losses.DiceLoss(**kwargs), mmloss.DiceLoss(**kwargs),
                pred, target, avg_factor=200.0)


def test_hand_computed():
    prob = torch.tensor([[1.0, 0.5, 0.0]])
    target = torch.tensor([[1.0, 1.0, 0.0]])
    # V-Net: 1 - 2 * 1.5 / ((1.25 + eps) + (2 + eps))
    out = dice_loss(prob, target, eps=0.01)
    assert_close(out, torch.tensor(1 - 3.0 / 3.27))
    # naive: 1 - (3 + eps) / (1.5 + 2 + eps)
    out = dice_loss(prob, target, eps=0.01, naive_dice=True)
    assert_close(out, torch.tensor(1 - 3.01 / 3.51))


def test_fast_matches_plain_and_gradcheck():
    g = torch.Generator().manual_seed(5)
    logits, target = masks(g, n=5, shape=(4, 3), dtype=torch.float64)
    for naive in (False, True):
        for fn, pred in ((sigmoid_dice_loss, logits),
                         (dice_loss, logits.sigmoid())):
            results = []
            for fast in (True, False):
                x = pred.clone().requires_grad_()
                out = fn(x, target, eps=0.1, naive_dice=naive,
                         reduction='none', fast=fast)
                (out * torch.arange(5.0, dtype=out.dtype)).sum().backward()
                results.append((out.detach(), x.grad))
            assert_close(results[0][0], results[1][0], rtol=1e-12,
                         atol=1e-12)
            assert_close(results[0][1], results[1][1], rtol=1e-12,
                         atol=1e-12)
            x = pred.clone().requires_grad_()
            assert torch.autograd.gradcheck(
                lambda t: fn(t, target, eps=0.1, naive_dice=naive,
                             reduction='none', fast=True), (x,))
    x = logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: mmloss.DiceLoss(naive_dice=True)(t, target), (x,))


# ------------------------------------------------------------- hardening
@pytest.mark.parametrize('reduction', REDUCTIONS)
def test_empty_input(reduction):
    for shape in ((0, 5, 5), (3, 0)):
        pred = torch.zeros(shape, requires_grad=True)
        out = mmloss.DiceLoss(reduction=reduction)(pred, torch.zeros(shape))
        assert torch.isfinite(out).all()
        out.sum().backward()
        assert pred.grad is not None


def test_zero_weight_and_empty_masks(mmdet_losses):
    pred = torch.full((3, 4, 4), -100.0)
    target = torch.zeros(3, 4, 4)
    compare(mmdet_losses.DiceLoss(), mmloss.DiceLoss(), pred, target)
    out = mmloss.DiceLoss()(torch.randn(3, 4, 4), target, torch.zeros(3))
    assert out.item() == 0


def test_extreme_logits(mmdet_losses):
    g = torch.Generator().manual_seed(6)
    logits, target = masks(g)
    compare(mmdet_losses.DiceLoss(), mmloss.DiceLoss(),
            torch.sign(logits) * 100, target)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    g = torch.Generator().manual_seed(7)
    # 300 x 300 pixels: the float16 sum of squares would overflow 65504
    pred = torch.randn(4, 300, 300, generator=g) + 3
    target = torch.ones(4, 300, 300)
    x = pred.to(dtype).requires_grad_()
    out = mmloss.DiceLoss()(x, target.to(dtype))
    # a reduced loss of half inputs is float32 (mmloss.precision)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    out.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    expected = mmloss.DiceLoss()(pred.to(dtype).float(), target)
    assert_close(out.float(), expected, rtol=1e-2, atol=1e-3)


def test_nan_propagates():
    pred = torch.randn(3, 4, 4)
    pred[1, 0, 0] = float('nan')
    assert torch.isnan(mmloss.DiceLoss()(pred, torch.ones(3, 4, 4)))


def test_invalid_inputs():
    loss = mmloss.DiceLoss()
    with pytest.raises(ValueError, match='DiceLoss'):
        loss(torch.randn(3, 4, 4), torch.randn(3, 4, 5))
    with pytest.raises(ValueError, match='DiceLoss'):
        loss(torch.randn(3, 4, 4), torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match='DiceLoss'):
        loss(torch.randn(3), torch.randn(3))
    with pytest.raises(TypeError, match='DiceLoss'):
        loss(torch.ones(3, 4, dtype=torch.long), torch.ones(3, 4))
    with pytest.raises(ValueError, match='DiceLoss'):
        loss(torch.randn(3, 4), torch.ones(3, 4), torch.ones(3, 1))
    with pytest.raises(ValueError, match='DiceLoss'):
        loss(torch.randn(3, 4), torch.ones(3, 4), reduction_override='max')
    with pytest.raises(ValueError, match='DiceLoss'):
        loss(torch.randn(3, 4), torch.ones(3, 4), None, 'sum', 2.0)
    for kwargs in (dict(eps=0.0), dict(eps=-1.0), dict(loss_weight=-1.0)):
        with pytest.raises(ValueError, match='DiceLoss'):
            mmloss.DiceLoss(**kwargs)
    # built, as by MMDetection, and refused at the call, where it refuses
    for kwargs in (dict(use_sigmoid=False), dict(reduction='avg')):
        built = mmloss.DiceLoss(**kwargs)
        with pytest.raises(ValueError, match='DiceLoss'):
            built(torch.randn(3, 4), torch.ones(3, 4))
    # probabilities given directly need no sigmoid, so no use_sigmoid either
    mmloss.DiceLoss(use_sigmoid=False, activate=False)


# --------------------------------------------------------------------------
# The engine: double backward, dispatch, autocast, no matrix products
# --------------------------------------------------------------------------
def _dice_call(fn, target, weight, reduction, naive, fast, avg_factor=None):
    def call(pred):
        return fn(pred, target, weight, eps=0.1, reduction=reduction,
                  naive_dice=naive, avg_factor=avg_factor, fast=fast)
    return call


@pytest.mark.parametrize('sigmoid', [True, False])
@pytest.mark.parametrize('naive', [False, True])
@pytest.mark.parametrize('reduction', REDUCTIONS)
@pytest.mark.parametrize('weighted', [False, True])
def test_double_backward_equals_the_plain_formula(sigmoid, naive, reduction,
                                                  weighted):
    g = torch.Generator().manual_seed(8)
    logits, target = masks(g, n=6, shape=(3, 5), dtype=torch.float64)
    pred = logits if sigmoid else logits.sigmoid()
    fn = sigmoid_dice_loss if sigmoid else dice_loss
    weight = torch.rand(6, generator=g, dtype=torch.float64) \
        if weighted else None
    avg_factor = 4.0 if weighted and reduction == 'mean' else None
    fast = derivatives(_dice_call(fn, target, weight, reduction, naive, True,
                                  avg_factor), (pred, ))
    plain = derivatives(_dice_call(fn, target, weight, reduction, naive,
                                   False, avg_factor), (pred, ))
    assert_same_derivatives(fast, plain, what=f'{reduction} naive={naive}')


@pytest.mark.parametrize('variant', VARIANTS, ids=str)
@pytest.mark.parametrize('reduction', REDUCTIONS)
def test_double_backward_matches_mmdet(mmdet_losses, variant, reduction):
    g = torch.Generator().manual_seed(9)
    logits, target = masks(g, n=5, shape=(4, 4), dtype=torch.float64)
    pred = logits if variant.get('activate', True) else logits.sigmoid()
    weight = torch.rand(5, generator=g, dtype=torch.float64)
    kwargs = dict(reduction=reduction, **variant)
    theirs = mmdet_losses.DiceLoss(**kwargs)
    ours = mmloss.DiceLoss(**kwargs)
    expected = derivatives(lambda p: theirs(p, target, weight), (pred, ))
    for fast in (True, False):
        with mmloss.fast_paths(fast), dispatch.pretend_device('cuda'):
            got = derivatives(lambda p: ours(p, target, weight), (pred, ))
        # mmdet casts the target to float32, so its sum of squares is
        # rounded to float32 even for float64 inputs
        assert_same_derivatives(got, expected, rtol=1e-6, atol=1e-7,
                                what=f'fast={fast}')


@pytest.mark.parametrize('naive', [False, True])
@pytest.mark.parametrize('reduction', REDUCTIONS)
def test_gradgradcheck(naive, reduction):
    g = torch.Generator().manual_seed(10)
    logits, target = masks(g, n=3, shape=(2, 3), dtype=torch.float64)
    weight = torch.rand(3, generator=g, dtype=torch.float64)
    for fn, pred in ((sigmoid_dice_loss, logits),
                     (dice_loss, logits.sigmoid())):
        assert torch.autograd.gradgradcheck(
            _dice_call(fn, target, weight, reduction, naive, True),
            (pred.clone().requires_grad_(), ))


def test_the_dispatcher_decides_the_path():
    # the dispatcher's size for the dice loss is the number of elements
    # N x D: one element per sample straddles its threshold exactly
    g = torch.Generator().manual_seed(11)
    threshold = dispatch.TUNING['cpu'].min_elements.get('DiceLoss', 0)

    def functions(n, **kwargs):
        pred, target = masks(g, n=n, shape=(1, ))
        out = sigmoid_dice_loss(pred.requires_grad_(), target, **kwargs)
        return custom_functions(out)

    kernel = 'GradientFromOutputBackward'  # sigmoid dice
    if threshold > 1:
        assert kernel not in functions(threshold - 1)
        assert kernel in functions(threshold - 1, fast=True)
    assert kernel in functions(max(threshold, 1))
    assert kernel not in functions(max(threshold, 1), fast=False)
    with mmloss.fast_paths(False):
        assert not functions(max(threshold, 1))
    with dispatch.pretend_device('cuda'):
        assert kernel in functions(max(
            dispatch.TUNING['cuda'].min_elements.get('DiceLoss', 0), 1))
    # the same elements split into other samples: the same path
    pred, target = masks(g, n=max(threshold, 16) // 16, shape=(4, 4))
    assert kernel in custom_functions(
        sigmoid_dice_loss(pred.requires_grad_(), target))
    # a target that requires grad takes the plain formula (it gets one)
    pred, target = masks(g, n=max(threshold, 1), shape=(1, ))
    target.requires_grad_()
    out = sigmoid_dice_loss(pred.requires_grad_(), target, fast=True)
    assert not custom_functions(out)
    out.backward()
    assert target.grad is not None


@pytest.mark.parametrize('n', [16, 5000])
@pytest.mark.parametrize('fast', [None, True, False])
@pytest.mark.parametrize('naive', [False, True])
def test_autocast_equals_float32(n, fast, naive):
    g = torch.Generator().manual_seed(12)
    logits, target = masks(g, n=n, shape=(4, 4))
    weight = torch.rand(n, generator=g)

    def step(autocast):
        x = logits.clone().requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            loss = sigmoid_dice_loss(x, target, weight, naive_dice=naive,
                                     fast=fast)
        loss.backward()
        return loss.detach(), x.grad

    (value, grad), (ref_value, ref_grad) = step(True), step(False)
    assert value.dtype == torch.float32
    assert_close(value, ref_value, rtol=1e-4, atol=0)
    assert_close(grad, ref_grad, rtol=1e-4,
                 atol=1e-4 * float(ref_grad.abs().max()))


def test_no_matrix_product_touches_pred_or_grad():
    g = torch.Generator().manual_seed(13)
    logits, target = masks(g, n=8)
    weight = torch.rand(8, generator=g)
    for fast in (True, False):
        for naive in (False, True):
            for reduction in REDUCTIONS:
                x = logits.clone().requires_grad_()
                with OpRecorder() as recorder:
                    sigmoid_dice_loss(x, target, weight, naive_dice=naive,
                                      reduction=reduction,
                                      fast=fast).sum().backward()
                assert not recorder.ops & MATMUL_FAMILY, recorder.ops


def test_function_input_errors_name_the_loss_and_shapes():
    with pytest.raises(ValueError, match=r'DiceLoss: pred must be \(N, \*\) '
                       r'.* but got \(3, 4\) and \(2, 4\)'):
        dice_loss(torch.rand(3, 4), torch.rand(2, 4))
    with pytest.raises(ValueError, match=r'DiceLoss: weight has shape \(2,\)'):
        sigmoid_dice_loss(torch.rand(3, 4), torch.rand(3, 4), torch.ones(2))
    with pytest.raises(TypeError, match='DiceLoss: pred must be a float'):
        dice_loss(torch.ones(3, 4, dtype=torch.long), torch.rand(3, 4))
    with pytest.raises(ValueError, match='DiceLoss: reduction'):
        dice_loss(torch.rand(3, 4), torch.rand(3, 4), reduction='max')
    # mask targets without the channel dimension of the logits
    out = sigmoid_dice_loss(torch.randn(3, 1, 4, 4), torch.rand(3, 4, 4))
    assert out.shape == ()


@pytest.mark.parametrize('use_sigmoid,activate', [(True, True),
                                                  (True, False)])
@pytest.mark.parametrize('naive_dice', [False, True])
@pytest.mark.parametrize('blocks', ['one', 'several'])
def test_the_fast_graph_keeps_the_inputs_and_two_sums_per_sample(
        monkeypatch, use_sigmoid, activate, naive_dice, blocks):
    """The fast path's graph keeps one (N, D) tensor and two numbers per
    sample: the sigmoid's probabilities it computed (as mmdet keeps the
    sigmoid's output; the logits are not held), or without the sigmoid
    the caller's probabilities (a reference); its gradient, built in
    backward, equals the plain formula's, in one row block and in several
    (the table's block rows made tiny: a block of 1600-element rows holds
    one row)."""
    from tests.test_focal import saved_bytes, small_blocks
    if blocks == 'several':
        small_blocks(monkeypatch)
    gen = torch.Generator().manual_seed(5)
    pred = torch.randn(6, 40, 40, generator=gen)
    if not activate:
        pred = pred.sigmoid()
    target = (torch.rand(6, 40, 40, generator=gen) > 0.5).float()
    weight = torch.rand(6, generator=gen)
    loss = mmloss.DiceLoss(use_sigmoid=use_sigmoid, activate=activate,
                           naive_dice=naive_dice)
    x = pred.clone().requires_grad_()
    with mmloss.fast_paths(True):
        total, kept = saved_bytes(
            lambda p: dice_fast(loss, p, target, weight), x)
    sigmoid = use_sigmoid and activate
    assert kept == (set() if sigmoid else {x.untyped_storage().data_ptr()})
    assert total <= x.numel() * 4 + 2 * 6 * 4 + 64
    grads = []
    for fast in (True, False):
        x = pred.clone().requires_grad_()
        with mmloss.fast_paths(fast):
            dice_fast(loss, x, target, weight).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def dice_fast(loss, pred, target, weight):
    """``loss`` on the kernel path whatever the size (``fast=True``)."""
    fn = sigmoid_dice_loss if loss.activate else dice_loss
    return fn(pred, target, weight, eps=loss.eps,
              naive_dice=loss.naive_dice, fast=True)
