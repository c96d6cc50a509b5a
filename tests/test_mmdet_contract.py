"""MMDetection's behaviour contract for invalid input, run on every twin.

Code written for MMDetection 3.3 catches what mmdet raises: its own loss
tests expect ``AssertionError`` for ``reduction_override='max'``, heads
rely on torch's ``RuntimeError`` for mismatched shapes, and so on. For each
twin and each invalid call below, when mmdet raises, mmloss must raise an
instance of the same type (mmloss's own errors, :mod:`mmloss.errors`, are
instances of their clear kind and of mmdet's types), and at the same
moment: a call mmdet accepts at construction must construct here too.
Calls mmdet accepts are not judged (mmloss may refuse more).
"""
import inspect
import warnings

import pytest
import torch

mmdet_losses = pytest.importorskip('mmdet.models.losses')

import mmloss  # noqa: E402
from mmloss.errors import (LossNotImplementedError, LossTypeError,  # noqa
                           LossValueError)
from mmloss.registry import MODELS  # noqa: E402
from tests.cases import CASES  # noqa: E402

N = 6
TWINS = sorted(name for name in MODELS.module_dict
               if hasattr(mmdet_losses, name))


def _float32(args):
    """``args`` with every floating tensor (in tuples too) in float32."""
    return tuple(_float32(a) if isinstance(a, tuple) else
                 a.detach().float() if isinstance(a, torch.Tensor)
                 and a.is_floating_point() else a for a in args)


#: (twin, probe) pairs where mmdet raises and mmloss deliberately does not,
#: each with the reason (written down where the loss is documented)
NOT_JUDGED = {
    # documented: beta < 1e-5 is L1, as in fvcore (mmdet asserts beta > 0)
    ('SmoothL1Loss', 'beta=0'),
    # not an invalid input: mmdet needs an initialised process group,
    # mmloss falls back to the local statistics without one
    ('EQLV2Loss', 'use_distributed=True'),
}


def _forward_parameters(cls):
    return inspect.signature(cls.forward).parameters


def _valid_call(case):
    """The plain call of ``case``'s inputs (through ``case.call`` where the
    forward takes no reduction arguments)."""
    if case.call is not None:
        return lambda loss, a, k: case.call(loss, a, k)
    return lambda loss, a, k: loss(*a, **k)


def _bad_values(default):
    """Values to try for a constructor argument of this default (mmdet's
    asserts and ``NotImplementedError`` are all on such values)."""
    if isinstance(default, bool):
        return [not default]
    if isinstance(default, (int, float)):
        return [0, -1]
    if isinstance(default, str):
        return ['bogus']
    return []


def _constructor_probes(name):
    """Each constructor argument of mmdet's class set to a value mmdet may
    refuse, followed by a valid call: mmdet raises at construction or at
    that call, mmloss must raise the same type at the same moment."""
    case = CASES[name]
    signature = inspect.signature(getattr(mmdet_losses, name).__init__)
    probes = []
    for argument, parameter in signature.parameters.items():
        if argument in case.cfg or parameter.default is inspect._empty:
            continue
        for bad in _bad_values(parameter.default):
            probes.append((f'{argument}={bad!r}', {argument: bad},
                           _valid_call(case)))
    return probes


def _labels_probe(args):
    """``args`` with one integer label past every class (``None`` where
    the second input holds no integer labels)."""
    target = args[1]
    labels = target[0] if isinstance(target, tuple) else target
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point():
        return None
    labels = labels.clone()
    labels[0] = 1000
    target = (labels, ) + target[1:] if isinstance(target, tuple) \
        else labels
    return (args[0], target) + args[2:]


def _probes(name):
    """``(probe name, constructor overrides, call)`` triples, ``call(loss,
    args, kwargs)`` making one invalid call (or a valid one after an
    invalid construction)."""
    case = CASES[name]
    params = _forward_parameters(getattr(mmdet_losses, name))
    probes = _constructor_probes(name)
    if _labels_probe(CASES[name].make(0, N)[0]) is not None:
        call = _valid_call(case)
        probes.append(('label past the classes', {},
                       lambda loss, a, k, call=call: call(
                           loss, _labels_probe(a), k)))
    if case.call is None:
        if 'reduction_override' in params:
            for bad in (True, 'max', 'MEAN'):
                probes.append((f'reduction_override={bad!r}', {},
                               lambda loss, a, k, bad=bad: loss(
                                   *a, reduction_override=bad, **k)))
            if 'avg_factor' in params:
                probes.append(('avg_factor with sum', {},
                               lambda loss, a, k: loss(
                                   *a, reduction_override='sum',
                                   avg_factor=2.0, **k)))
                probes.append(("avg_factor with reduction='sum' built",
                               dict(reduction='sum'), lambda loss, a, k: loss(
                                   *a, avg_factor=2.0, **k)))
        if 'weight' in params and case.weight_shape is not None:
            probes.append(('weight of N + 1 rows', {},
                           lambda loss, a, k: loss(
                               *a, weight=torch.rand(N + 1), **k)))
            for dtype in (torch.float64, torch.long, torch.bool):
                probes.append((f'weight of {dtype}', {},
                               lambda loss, a, k, dtype=dtype: loss(
                                   *a, weight=torch.ones(
                                       case.weight_shape(N), dtype=dtype),
                                   **k)))
        init = inspect.signature(getattr(mmdet_losses, name).__init__)
        if 'class_weight' in init.parameters:
            probes.append(('class_weight of 3 classes',
                           dict(class_weight=[1.0, 2.0, 3.0]),
                           lambda loss, a, k: loss(*a, **k)))
        probes.append(("reduction='max'", dict(reduction='max'),
                       lambda loss, a, k: loss(*a, **k)))
        probes.append(('second input one row short', {},
                       lambda loss, a, k: loss(a[0], a[1][:-1], *a[2:],
                                               **k)))
        probes.append(('integer pred', {},
                       lambda loss, a, k: loss(a[0].long(), *a[1:], **k)))
    return probes


def _outcome(make, call):
    """``(phase, exception)``: where it raised ('build' or 'call') and
    what, or ``(None, None)``."""
    try:
        loss = make()
    except Exception as error:  # noqa: BLE001 - the contract is the type
        return 'build', error
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            call(loss)
    except Exception as error:  # noqa: BLE001
        return 'call', error
    return None, None


CONTRACT = [(name, probe, overrides, call) for name in TWINS
            for probe, overrides, call in _probes(name)]


@pytest.mark.parametrize('name,probe,overrides,call', CONTRACT,
                         ids=[f'{c[0]}-{c[1]}' for c in CONTRACT])
def test_mmloss_raises_what_mmdet_raises_when_mmdet_does(name, probe,
                                                         overrides, call):
    args, kwargs = CASES[name].make(0, N)
    args = _float32(args)
    cfg = dict(CASES[name].cfg)

    def mmdet_loss():
        return getattr(mmdet_losses, name)(**dict(cfg, **overrides))

    def our_loss():
        return MODELS.build(dict(type=name, **dict(cfg, **overrides)))

    theirs = _outcome(mmdet_loss, lambda loss: call(loss, args, kwargs))
    ours = _outcome(our_loss, lambda loss: call(loss, args, kwargs))
    if theirs[1] is None or (name, probe) in NOT_JUDGED:
        return
    assert ours[1] is not None, (
        f'{name} {probe}: mmdet raises {type(theirs[1]).__name__} '
        f'({theirs[1]}), mmloss accepts the call')
    assert isinstance(ours[1], type(theirs[1])), (
        f'{name} {probe}: mmdet raises {type(theirs[1]).__name__}, '
        f'mmloss {type(ours[1]).__name__}: {ours[1]}')
    assert ours[0] == theirs[0], (
        f'{name} {probe}: mmdet raises at {theirs[0]}, mmloss at '
        f'{ours[0]}: {ours[1]}')
    # mmloss's message still names the loss
    if isinstance(ours[1], (LossValueError, LossTypeError,
                            LossNotImplementedError)):
        assert name in str(ours[1]) or 'loss' in str(ours[1]).lower()


def test_every_twin_has_probes():
    """A twin without a probe escapes the contract (a loss whose forward
    takes no keywords still gets the construction probes of its own
    test module)."""
    covered = {name for name, *_ in CONTRACT}
    missing = [name for name in TWINS if name not in covered
               and CASES[name].call is None]
    assert not missing


def test_every_exception_names_a_probe_mmdet_refuses():
    """:data:`NOT_JUDGED` cannot go stale: each entry is a probe, and
    mmdet does raise there."""
    probes = {(name, probe): (overrides, call)
              for name, probe, overrides, call in CONTRACT}
    for name, probe in NOT_JUDGED:
        overrides, call = probes[name, probe]
        args, kwargs = CASES[name].make(0, N)
        phase, error = _outcome(
            lambda: getattr(mmdet_losses, name)(
                **dict(CASES[name].cfg, **overrides)),
            lambda loss: call(loss, _float32(args), kwargs))
        assert error is not None, (name, probe)


def test_balanced_l1_zero_alpha_is_mmdets_zero_division():
    """mmdet divides by ``alpha`` and ``gamma`` at the call; mmloss builds
    the loss too and raises a ``ZeroDivisionError`` naming it there."""
    pred, target = torch.rand(3, 4), torch.rand(3, 4)
    for kwargs in (dict(alpha=0), dict(gamma=0.0)):
        theirs = mmdet_losses.BalancedL1Loss(**kwargs)
        with pytest.raises(ZeroDivisionError):
            theirs(pred, target)
        ours = MODELS.build(dict(type='BalancedL1Loss', **kwargs))
        with pytest.raises(ZeroDivisionError, match='BalancedL1Loss'):
            ours(pred, target)
        with pytest.raises(ValueError, match='BalancedL1Loss'):
            ours(pred, target)


def test_dice_without_sigmoid_builds_and_refuses_at_call_like_mmdet():
    """mmdet builds ``DiceLoss(use_sigmoid=False, activate=True)`` and
    raises ``NotImplementedError`` in forward (the softmax is not
    defined): the same moment and type here, with a message."""
    pred = torch.randn(2, 4, 4)
    target = (torch.rand(2, 4, 4) > 0.5).float()
    theirs = mmdet_losses.DiceLoss(use_sigmoid=False, activate=True)
    with pytest.raises(NotImplementedError):
        theirs(pred, target)
    ours = MODELS.build(dict(type='DiceLoss', use_sigmoid=False,
                             activate=True))
    with pytest.raises(NotImplementedError, match='DiceLoss'):
        ours(pred, target)


def test_error_classes_are_each_mmdet_type():
    error = LossValueError('GIoULoss: bad')
    for kind in (ValueError, AssertionError, RuntimeError, IndexError):
        assert isinstance(error, kind)
    error = LossTypeError('FocalLoss: bad')
    for kind in (TypeError, AssertionError, RuntimeError,
                 NotImplementedError):
        assert isinstance(error, kind)
    assert isinstance(LossNotImplementedError('DiceLoss'),
                      NotImplementedError)
    # every mmloss error stays the ValueError/TypeError mmloss documents
    assert isinstance(LossNotImplementedError('DiceLoss'), ValueError)
    assert isinstance(mmloss.LossZeroDivisionError('BalancedL1Loss'),
                      (ValueError, ZeroDivisionError, AssertionError))
    assert mmloss.LossValueError is LossValueError
    assert str(error) == 'FocalLoss: bad'
