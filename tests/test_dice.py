"""DiceLoss against MMDetection 3.3."""
import pytest
import torch

import mmloss
from mmloss.losses.dice import DiceFunction, dice_loss, sigmoid_dice_loss
from mmloss.reduction import FLOAT32_EPS
from tests.helpers import assert_close

REDUCTIONS = ('none', 'mean', 'sum')
VARIANTS = [dict(naive_dice=False), dict(naive_dice=True),
            dict(naive_dice=True, eps=1.0), dict(activate=False)]


def masks(generator, n=12, shape=(6, 7), dtype=torch.float32):
    logits = torch.randn(n, *shape, generator=generator, dtype=dtype) * 2
    target = (torch.rand(n, *shape, generator=generator) > 0.6).to(dtype)
    return logits, target


def compare(ref, ours, pred, target, *args, grad_atol=1e-6, **kwargs):
    xa, xb = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    a, b = ref(xa, target, *args, **kwargs), ours(xb, target, *args, **kwargs)
    assert b.shape == a.shape
    assert_close(b, a, what='value')
    proj = torch.linspace(-1, 1, a.numel()).reshape(a.shape)
    (a * proj).sum().backward()
    (b * proj).sum().backward()
    assert_close(xb.grad, xa.grad, atol=grad_atol, what='grad')


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
            x = pred.flatten(1).clone().requires_grad_()
            assert torch.autograd.gradcheck(
                lambda t: DiceFunction.apply(t, target.flatten(1), 0.1, naive,
                                             fn is sigmoid_dice_loss), (x,))
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
    assert out.dtype == dtype and torch.isfinite(out)
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
    for kwargs in (dict(use_sigmoid=False), dict(eps=0.0), dict(eps=-1.0),
                   dict(loss_weight=-1.0), dict(reduction='avg')):
        with pytest.raises(ValueError, match='DiceLoss'):
            mmloss.DiceLoss(**kwargs)
    # probabilities given directly need no sigmoid, so no use_sigmoid either
    mmloss.DiceLoss(use_sigmoid=False, activate=False)
