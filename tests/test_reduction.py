"""reduce_loss / weight_reduce_loss / weighted_loss against mmdet 3.3 and by hand."""
import itertools

import pytest
import torch

from mmloss.reduction import (FLOAT32_EPS, reduce_loss, weight_reduce_loss,
                              weighted_loss)
from tests.helpers import assert_close

REDUCTIONS = ('none', 'mean', 'sum')


@pytest.fixture(scope='module')
def mmdet_utils():
    return pytest.importorskip('mmdet.models.losses.utils')


def _loss_and_weights(generator):
    loss = torch.rand(7, 5, generator=generator, dtype=torch.float64)
    weights = {
        'none': None,
        'elementwise': torch.rand(7, 5, generator=generator,
                                  dtype=torch.float64),
        'per_row': torch.rand(7, 1, generator=generator, dtype=torch.float64),
        'zeros': torch.zeros(7, 5, dtype=torch.float64),
    }
    return loss, weights


def test_hand_computed_values():
    loss = torch.tensor([1., 2., 3., 6.])
    weight = torch.tensor([1., 0., 1., 0.5])
    assert reduce_loss(loss, 'sum').item() == 12.0
    assert reduce_loss(loss, 'mean').item() == 3.0
    assert torch.equal(reduce_loss(loss, 'none'), loss)
    # (1 + 0 + 3 + 3) / 4
    assert weight_reduce_loss(loss, weight).item() == pytest.approx(7 / 4)
    # sum / (avg_factor + eps)
    assert weight_reduce_loss(loss, weight, avg_factor=2).item() == \
        pytest.approx(7 / (2 + FLOAT32_EPS), rel=1e-7)
    # 'none' ignores avg_factor
    assert torch.equal(
        weight_reduce_loss(loss, weight, 'none', avg_factor=2),
        loss * weight)
    assert FLOAT32_EPS == pytest.approx(1.1920929e-07)


def test_avg_factor_zero_divides_by_eps():
    loss = torch.tensor([0.5, 0.25])
    out = weight_reduce_loss(loss, reduction='mean', avg_factor=0)
    assert out.item() == pytest.approx(0.75 / FLOAT32_EPS, rel=1e-6)
    zero = weight_reduce_loss(torch.zeros(3), reduction='mean', avg_factor=0)
    assert zero.item() == 0.0


def test_avg_factor_tensor_is_accepted():
    loss = torch.tensor([1., 3.])
    out = weight_reduce_loss(loss, avg_factor=torch.tensor(4.0))
    assert out.item() == pytest.approx(4 / (4 + FLOAT32_EPS))


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_weight_reduce_loss_matches_mmdet_on_a_grid(mmdet_utils, seed):
    generator = torch.Generator().manual_seed(seed)
    loss, weights = _loss_and_weights(generator)
    for (wname, weight), reduction, avg_factor in itertools.product(
            weights.items(), REDUCTIONS, (None, 0, 0.5, 3, 35.0)):
        what = f'weight={wname} reduction={reduction} avg_factor={avg_factor}'
        if reduction == 'sum' and avg_factor is not None:
            with pytest.raises(ValueError):
                mmdet_utils.weight_reduce_loss(loss, weight, reduction,
                                               avg_factor)
            with pytest.raises(ValueError, match='avg_factor'):
                weight_reduce_loss(loss, weight, reduction, avg_factor)
            continue
        expected = mmdet_utils.weight_reduce_loss(loss, weight, reduction,
                                                  avg_factor)
        actual = weight_reduce_loss(loss, weight, reduction, avg_factor)
        assert_close(actual, expected, rtol=1e-12, atol=0, what=what)


def test_weighted_loss_decorator_matches_mmdet(mmdet_utils, generator):

    def absolute_error(pred, target, scale=1.0):
        return (pred - target).abs() * scale

    ours = weighted_loss(absolute_error)
    theirs = mmdet_utils.weighted_loss(absolute_error)
    pred = torch.randn(20, 4, generator=generator, requires_grad=True)
    target = torch.randn(20, 4, generator=generator)
    weight = torch.rand(20, 4, generator=generator)
    for reduction, avg_factor in [('mean', None), ('sum', None),
                                  ('none', None), ('mean', 7), ('none', 7)]:
        kwargs = dict(weight=weight, reduction=reduction,
                      avg_factor=avg_factor, scale=2.0)
        actual = ours(pred, target, **kwargs)
        expected = theirs(pred, target, **kwargs)
        assert_close(actual, expected, what=f'{reduction}, {avg_factor}')
        grad, = torch.autograd.grad(actual.sum(), pred)
        grad_ref, = torch.autograd.grad(expected.sum(), pred)
        assert_close(grad, grad_ref)
    assert ours.__name__ == 'absolute_error'


def test_weighted_loss_hand_example():

    @weighted_loss
    def absolute_error(pred, target):
        return (pred - target).abs()

    pred, target = torch.tensor([0., 2, 3]), torch.ones(3)
    weight = torch.tensor([1., 0, 1])
    assert absolute_error(pred, target).item() == pytest.approx(4 / 3)
    assert absolute_error(pred, target, weight).item() == pytest.approx(1.0)
    assert absolute_error(pred, target, weight, avg_factor=2).item() == \
        pytest.approx(1.5, rel=1e-6)
    assert absolute_error(pred, target, reduction='none').tolist() == \
        [1., 1., 2.]


@pytest.mark.parametrize('reduction,avg_factor', [
    ('none', None), ('none', 4), ('mean', None), ('mean', 0), ('mean', 4),
    ('sum', None)
])
def test_empty_loss_is_a_connected_zero(reduction, avg_factor):
    # mmdet's mean of an empty tensor is NaN; ours is 0 with a gradient path.
    pred = torch.zeros(0, 4, requires_grad=True)
    out = weight_reduce_loss(pred * 2, torch.ones(0, 4), reduction, avg_factor)
    if reduction == 'none':
        assert out.shape == (0, 4)
        out = out.sum()
    assert out.item() == 0.0
    assert out.requires_grad
    out.backward()
    assert pred.grad.shape == (0, 4)


@pytest.mark.parametrize('bad', ['avg', 'MEAN', None, 'elementwise_mean'])
def test_unknown_reduction_lists_the_valid_ones(bad):
    loss = torch.ones(3)
    for call in (lambda: reduce_loss(loss, bad),
                 lambda: weight_reduce_loss(loss, reduction=bad),
                 lambda: weight_reduce_loss(loss, reduction=bad,
                                            avg_factor=2)):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert repr(bad) in message
        for valid in REDUCTIONS:
            assert repr(valid) in message
        # mmdet's modules assert the reduction: catchable as that too
        assert isinstance(info.value, AssertionError)


@pytest.mark.parametrize('call', ['weight_reduce_loss', 'reduce_weighted_sum'])
def test_sum_with_avg_factor_raises_what_mmdet_raises(mmdet_utils, call):
    from mmloss.reduction import reduce_weighted_sum
    loss = torch.ones(3)
    with pytest.raises(ValueError) as theirs:
        mmdet_utils.weight_reduce_loss(loss, reduction='sum', avg_factor=2)
    with pytest.raises(type(theirs.value), match='avg_factor') as ours:
        if call == 'weight_reduce_loss':
            weight_reduce_loss(loss, reduction='sum', avg_factor=2)
        else:
            reduce_weighted_sum('L1Loss', loss.sum(), 3, 'sum', 2)
    assert isinstance(ours.value, AssertionError)


def test_nan_propagates():
    loss = torch.tensor([1.0, float('nan')])
    assert torch.isnan(weight_reduce_loss(loss))
    assert torch.isnan(weight_reduce_loss(loss, avg_factor=2))


def test_reduce_weighted_sum_follows_weight_reduce_loss(generator):
    from mmloss.reduction import reduce_weighted_sum
    loss = torch.rand(6, 3, generator=generator, dtype=torch.float64)
    weight = torch.rand(6, 3, generator=generator, dtype=torch.float64)
    total = (loss * weight).sum()
    for reduction, avg_factor in [('mean', None), ('mean', 0), ('mean', 2.5),
                                  ('sum', None)]:
        assert_close(reduce_weighted_sum('X', total, loss.numel(), reduction,
                                         avg_factor),
                     weight_reduce_loss(loss, weight, reduction, avg_factor),
                     rtol=1e-12, atol=0)
    empty = torch.zeros(0, requires_grad=True)
    out = reduce_weighted_sum('X', empty.sum(), 0, 'mean')
    assert out.item() == 0.0 and out.requires_grad
    with pytest.raises(ValueError, match='X: avg_factor'):
        reduce_weighted_sum('X', total, 18, 'sum', avg_factor=3)
    with pytest.raises(ValueError, match='X: .*"none"'):
        reduce_weighted_sum('X', total, 18, 'none')
    with pytest.raises(ValueError, match="X: reduction .*'avg'"):
        reduce_weighted_sum('X', total, 18, 'avg')
