"""NWD loss: hand-computed values, gradcheck and hardening."""
import math

import pytest
import torch

import mmloss
from mmloss.losses.wasserstein import gaussian_wasserstein_sq, nwd_loss
from tests.helpers import assert_close, jitter_boxes, random_boxes

REDUCTIONS = ('none', 'mean', 'sum')
P = torch.tensor([[0., 0., 2., 2.]], dtype=torch.float64)
T = torch.tensor([[1., 1., 3., 3.]], dtype=torch.float64)


def pairs(n, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    target = random_boxes(n, gen, 100.0, torch.float64)
    return jitter_boxes(target, gen, 0.5).to(dtype), target.to(dtype)


def test_hand_values():
    # same size, centres 1 apart in x and y: W2**2 = 2
    assert gaussian_wasserstein_sq(P, T).item() == 2
    expected = 1 - math.exp(-math.sqrt(2 + 1e-7) / 12.8)
    assert nwd_loss(P, T, reduction='none').item() == \
        pytest.approx(expected, rel=1e-9)
    # same centre, sizes 2 and 4 (half-sizes 1 and 2 in x and y): W2**2 = 2
    big = torch.tensor([[-1., -1., 3., 3.]], dtype=torch.float64)
    assert gaussian_wasserstein_sq(P + 0, big).item() == 2
    # the dataset constant is an argument
    assert nwd_loss(P, T, constant=1.0, reduction='none').item() == \
        pytest.approx(1 - math.exp(-math.sqrt(2 + 1e-7)), rel=1e-9)


def test_module_reductions_and_weights():
    pred, target = pairs(100, 0)
    weight = torch.rand(100, 4)
    elementwise = nwd_loss(pred, target, reduction='none')
    module = mmloss.NWDLoss(loss_weight=2.0)
    assert_close(module(pred, target, weight=weight),
                 2 * (elementwise * weight.mean(-1)).mean())
    assert_close(module(pred, target, weight=weight, avg_factor=7.0),
                 2 * (elementwise * weight.mean(-1)).sum() /
                 (7.0 + torch.finfo(torch.float32).eps))
    assert_close(module(pred, target, reduction_override='sum'),
                 2 * elementwise.sum())
    assert_close(module(pred, target, reduction_override='none'),
                 2 * elementwise)
    with pytest.raises(ValueError, match='NWDLoss: avg_factor'):
        module(pred, target, avg_factor=3.0, reduction_override='sum')


def test_identical_far_and_disjoint():
    # identical: sqrt(eps) keeps it finite and differentiable
    box = torch.tensor([[10., 10., 20., 30.]], requires_grad=True)
    loss = mmloss.NWDLoss(reduction='none')(box, box.detach())
    loss.sum().backward()
    assert loss.item() == pytest.approx(1 - math.exp(-math.sqrt(1e-7) / 12.8),
                                        rel=1e-4)
    assert torch.isfinite(box.grad).all()
    # disjoint boxes still get a gradient (unlike IoU), far ones saturate
    near = torch.tensor([[30., 10., 40., 30.]], requires_grad=True)
    mmloss.NWDLoss()(near, box.detach()).backward()
    assert near.grad.abs().sum() > 0
    far = torch.tensor([[1e6, 1e6, 1.00001e6, 1.00002e6]])
    assert mmloss.NWDLoss()(far, box.detach()).item() == pytest.approx(1.0)


def test_gradcheck():
    pred, target = pairs(10, 1, torch.float64)
    assert torch.autograd.gradcheck(
        lambda p, t: nwd_loss(p, t, reduction='none', constant=20.0),
        (pred.requires_grad_(), target.requires_grad_()))


@pytest.mark.parametrize('reduction', REDUCTIONS)
@pytest.mark.parametrize('avg_factor', [None, 0, 4.0])
def test_empty(reduction, avg_factor):
    if reduction == 'sum' and avg_factor is not None:
        return
    pred = torch.zeros(0, 4, requires_grad=True)
    for weight in (None, torch.zeros(0)):
        loss = mmloss.NWDLoss(reduction=reduction)(
            pred, torch.zeros(0, 4), weight=weight, avg_factor=avg_factor)
        assert torch.isfinite(loss).all()
        loss.sum().backward()


def test_zero_weights():
    pred, target = pairs(20, 2)
    pred.requires_grad_()
    loss = mmloss.NWDLoss()(pred, target, weight=torch.zeros(20, 4),
                            avg_factor=0)
    loss.backward()
    assert loss.item() == 0 and not pred.grad.any()


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half(dtype):
    pred, target = pairs(30, 3, dtype)
    pred = (pred * 10).detach().requires_grad_()  # up to ~2000 px
    loss = mmloss.NWDLoss()(pred, target * 10)
    loss.backward()
    # reduced: float32 (the project's half rule); the gradient: the input's
    assert loss.dtype == torch.float32 and pred.grad.dtype == dtype
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    assert mmloss.NWDLoss(reduction='none')(pred, target).dtype == dtype


def test_nan_propagates():
    pred, target = pairs(5, 4)
    pred[2, 0] = float('nan')
    assert torch.isnan(mmloss.NWDLoss()(pred, target))


def test_invalid():
    loss = mmloss.NWDLoss()
    with pytest.raises(ValueError, match='NWDLoss'):
        loss(torch.rand(3, 4), torch.rand(4, 4))
    with pytest.raises(ValueError, match='NWDLoss'):
        loss(torch.rand(3, 5), torch.rand(3, 5))
    with pytest.raises(TypeError, match='NWDLoss'):
        loss(torch.ones(3, 4, dtype=torch.long), torch.ones(3, 4))
    for kw in (dict(constant=0), dict(constant=-1.0), dict(loss_weight=-1),
               dict(eps=-1.0)):
        with pytest.raises(ValueError, match='NWDLoss'):
            mmloss.NWDLoss(**kw)
    # an unknown reduction builds, as in MMDetection, and the call raises
    with pytest.raises(ValueError, match='NWDLoss'):
        mmloss.NWDLoss(reduction='avg')(torch.rand(3, 4), torch.rand(3, 4))


def test_registry():
    from mmdet.registry import MODELS
    built = MODELS.build(dict(type='mmloss.NWDLoss', constant=8.0))
    assert isinstance(built, mmloss.NWDLoss) and built.constant == 8.0


def test_function_checks_and_signature():
    import inspect
    params = list(inspect.signature(nwd_loss).parameters)
    assert params[:5] == ['pred', 'target', 'weight', 'reduction',
                          'avg_factor']
    assert inspect.signature(nwd_loss).parameters['reduction'].default == \
        'mean'
    with pytest.raises(ValueError, match=r'NWDLoss: pred has shape \(10, 4\) '
                       r'but target has shape \(10, 5\)'):
        nwd_loss(torch.rand(10, 4), torch.rand(10, 5))
    with pytest.raises(ValueError, match='NWDLoss: avg_factor'):
        nwd_loss(P, T, reduction='sum', avg_factor=1.0)
    with pytest.raises(ValueError, match='NWDLoss: weight'):
        nwd_loss(P, T, torch.ones(3))


@pytest.mark.parametrize('n', [16, 1025, 40_000])
@pytest.mark.parametrize('reduction', ['mean', 'none'])
def test_autocast_computes_as_float32(n, reduction):
    pred, target = pairs(n, 5)
    pred, target = pred * 10 + 0.123, target * 10 + 0.123
    out = []
    for enabled in (False, True):
        p = pred.clone().requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=enabled):
            loss = mmloss.NWDLoss(reduction=reduction)(p, target)
            loss.sum().backward()
        out.append((loss.detach(), p.grad))
    assert out[1][0].dtype == torch.float32
    for a, b in zip(*out):
        assert_close(a, b, rtol=1e-4, atol=0)


def test_eps_must_be_positive():
    # Issue 14: with eps = 0 the square root's derivative at a perfect
    # match is Inf, and the gradient NaN
    box = torch.tensor([[10., 10., 20., 30.]], requires_grad=True)
    nwd_loss(box, box.detach(), eps=1e-12).backward()
    assert torch.isfinite(box.grad).all()
    for eps in (0, 0.0, -1e-7):
        with pytest.raises(ValueError, match='NWDLoss: eps must be'):
            nwd_loss(box, box.detach(), eps=eps)
        with pytest.raises(ValueError, match='NWDLoss: eps must be'):
            mmloss.NWDLoss(eps=eps)


@pytest.mark.parametrize('bad', [math.inf, -math.inf, math.nan])
def test_nonfinite_box_gives_nonfinite_loss(bad):
    # Issue 14: an Inf coordinate gave 1 - exp(-Inf) = 1, a finite loss
    # with NaN gradients that MMLOSS_CHECK_FINITE could not see
    pred, target = pairs(5, 1)
    for side in (pred, target):
        p, t = pred.clone(), target.clone()
        (p if side is pred else t)[1, 3] = bad
        loss = nwd_loss(p, t, reduction='none')
        assert torch.isfinite(loss).tolist() == [True, False, True, True,
                                                 True]
        assert not torch.isfinite(nwd_loss(p, t))
