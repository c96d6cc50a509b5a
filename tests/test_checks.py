"""The shared argument checks and the opt-in finiteness check."""
import pytest
import torch

import mmloss
from mmloss import checks
from mmloss.engine import dispatch
from mmloss.losses.base import BaseLoss


class SumLoss(BaseLoss):
    """A minimal module for exercising BaseLoss."""

    def forward(self, pred, reduction_override=None):
        reduction = self.resolve_reduction(reduction_override)
        loss = pred * self.loss_weight
        return loss if reduction == 'none' else getattr(loss, reduction)()


@pytest.fixture
def finite_check_off():
    yield
    mmloss.set_check_finite(None)


def test_base_loss_validates_once_and_resolves_overrides():
    loss = SumLoss(reduction='sum', loss_weight=2.0)
    pred = torch.tensor([1.0, 2.0])
    assert loss(pred).item() == 6.0
    assert loss(pred, reduction_override='mean').item() == 3.0
    with pytest.raises(ValueError, match=r"SumLoss: reduction_override .*'avg'"):
        loss(pred, reduction_override='avg')
    # an unknown reduction builds, as in MMDetection, and the call raises
    total = SumLoss(reduction='total')
    assert total.reduction == 'total'
    with pytest.raises(ValueError, match=r"SumLoss: reduction .*'total'"):
        total(pred)
    # an override still wins over the stored reduction
    assert total(pred, reduction_override='sum').item() == 3.0
    for bad in (-1.0, 'one', None, float('nan'), True):
        with pytest.raises(ValueError, match='SumLoss: loss_weight'):
            SumLoss(loss_weight=bad)


def test_nan_propagates_by_default_and_raises_when_asked(
        finite_check_off, monkeypatch):
    loss = SumLoss()
    pred = torch.tensor([1.0, float('nan')])
    monkeypatch.delenv(checks.CHECK_FINITE_ENV, raising=False)
    assert torch.isnan(loss(pred))
    monkeypatch.setenv(checks.CHECK_FINITE_ENV, '1')
    with pytest.raises(FloatingPointError,
                       match=r'SumLoss: .*inputs already hold NaN.*\(2,\)'):
        loss(pred)
    assert loss(torch.ones(2)).item() == 1.0
    mmloss.set_check_finite(False)
    assert torch.isnan(loss(pred))
    monkeypatch.delenv(checks.CHECK_FINITE_ENV)
    mmloss.set_check_finite(True)
    overflow = SumLoss(reduction='sum', loss_weight=1e30)
    with pytest.raises(FloatingPointError, match='inputs are finite'):
        overflow(torch.full((4,), 1e10))


def test_shape_and_dtype_checks_name_the_loss():
    with pytest.raises(ValueError,
                       match=r'GIoULoss: pred has shape \(10, 4\) but target '
                       r'has shape \(10, 5\)'):
        checks.check_box_shape('GIoULoss', torch.zeros(10, 4),
                               torch.zeros(10, 5))
    with pytest.raises(ValueError, match=r'IoULoss: pred must have shape'):
        checks.check_box_shape('IoULoss', torch.zeros(10, 5),
                               torch.zeros(10, 5))
    with pytest.raises(TypeError, match='FocalLoss: target must hold integer'):
        checks.check_integer_labels('FocalLoss', torch.zeros(3))
    checks.check_integer_labels('FocalLoss', torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r'L1Loss: weight has shape \(3,\)'):
        checks.check_weight_shape('L1Loss', torch.ones(3), (4, 2))
    checks.check_weight_shape('L1Loss', torch.ones(4, 1), (4, 2))
    with pytest.raises(ValueError, match=r'GHMC: momentum must lie in \[0, 1\)'):
        checks.check_in_range('GHMC', 'momentum', 1.0, 0, 1)
    with pytest.raises(ValueError, match='SmoothL1Loss: beta must be a number > 0'):
        checks.check_positive('SmoothL1Loss', 'beta', 0.0)
    assert checks.check_positive('SmoothL1Loss', 'beta', 0.0,
                                 allow_zero=True) == 0.0
    with pytest.raises(TypeError, match='DiceLoss: pred must be a torch.Tensor'):
        checks.check_tensor('DiceLoss', 'pred', [1.0])


def test_float_check_names_the_loss_and_dtype():
    with pytest.raises(TypeError, match='L1Loss: pred must be a floating '
                       'point tensor, but has dtype torch.int64'):
        checks.check_float('L1Loss', 'pred', torch.zeros(3, dtype=torch.long))
    x = torch.zeros(3, dtype=torch.float16)
    assert checks.check_float('L1Loss', 'pred', x) is x
    with pytest.raises(TypeError, match='L1Loss: pred must be a '
                       'torch.Tensor, but got list'):
        checks.check_float('L1Loss', 'pred', [1.0])


def test_weight_of_the_loss_shape_passes_without_broadcasting():
    checks.check_weight_shape('L1Loss', torch.ones(4, 2), (4, 2))
    checks.check_weight_shape('L1Loss', torch.ones(4, 2), torch.Size([4, 2]))
    with pytest.raises(TypeError, match='L1Loss: weight must be a torch'):
        checks.check_weight_shape('L1Loss', [1.0], (1, ))


def test_label_range_check_reads_values_only_on_the_cpu():
    labels = torch.tensor([0, 3, 5])
    checks.check_label_range('GHMC', labels, 5, high_inclusive=True)
    with pytest.raises(ValueError, match=r'GHMC: label holds 5, but labels '
                       r'must lie in \[0, 5\)'):
        checks.check_label_range('GHMC', labels, 5)
    # the switch that forces the plain formulas does not change a check
    with mmloss.fast_paths(False):
        with pytest.raises(ValueError, match='GHMC: label holds 5'):
            checks.check_label_range('GHMC', labels, 5)
    # off the CPU the check is queued (torch._assert_async), never read on
    # the host; on CPU tensors the queued assertion fails at once
    with dispatch.pretend_device('cuda'):
        checks.check_label_range('GHMC', labels, 5, high_inclusive=True)
        with pytest.raises(RuntimeError, match='GHMC: label out of range'):
            checks.check_label_range('GHMC', labels, 5)
        with pytest.raises(RuntimeError, match='GHMC: label out of range'):
            checks.check_label_range('GHMC', -labels - 1, 5)
        checks.check_label_range('GHMC', -labels - 1, 5, allow_negative=True)


def test_checks_raise_what_mmdet_raises_for_the_same_mistake():
    # mmdet asserts (AssertionError) or lets torch fail (RuntimeError,
    # IndexError) where these checks raise; each error is all of those
    value_errors = [
        lambda: checks.check_reduction('L1Loss', 'max'),
        lambda: checks.check_loss_weight('L1Loss', -1.0),
        lambda: checks.check_positive('L1Loss', 'beta', 0.0),
        lambda: checks.check_in_range('GHMC', 'momentum', 1.0, 0, 1),
        lambda: checks.check_same_shape('L1Loss', torch.zeros(2),
                                        torch.zeros(3)),
        lambda: checks.check_box_shape('GIoULoss', torch.zeros(2, 5),
                                       torch.zeros(2, 5)),
        lambda: checks.check_weight_shape('L1Loss', torch.ones(3), (4, 2)),
        lambda: checks.check_label_range('GHMC', torch.tensor([7]), 5),
        lambda: checks.check_avg_factor('L1Loss', 'sum', 2.0),
    ]
    for call in value_errors:
        with pytest.raises(mmloss.LossValueError) as info:
            call()
        for kind in (ValueError, AssertionError, RuntimeError, IndexError):
            assert isinstance(info.value, kind), (kind, info.value)
    type_errors = [
        lambda: checks.check_tensor('L1Loss', 'pred', [1.0]),
        lambda: checks.check_float('L1Loss', 'pred',
                                   torch.zeros(2, dtype=torch.long)),
        lambda: checks.check_integer_labels('FocalLoss', torch.zeros(3)),
    ]
    for call in type_errors:
        with pytest.raises(mmloss.LossTypeError) as info:
            call()
        for kind in (TypeError, AssertionError, NotImplementedError):
            assert isinstance(info.value, kind), (kind, info.value)


def test_environment_value_follows_the_environment(monkeypatch):
    name = 'MMLOSS_TEST_ENVIRONMENT_VALUE'
    monkeypatch.delenv(name, raising=False)
    assert dispatch.environment_value(name) is None
    monkeypatch.setenv(name, ' On ')
    assert dispatch.environment_value(name) == ' On '
    monkeypatch.setenv(checks.CHECK_FINITE_ENV, ' On ')
    assert checks.check_finite_enabled()
    monkeypatch.setenv(checks.CHECK_FINITE_ENV, 'off')
    assert not checks.check_finite_enabled()
