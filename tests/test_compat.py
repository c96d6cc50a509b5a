"""mmloss.compat: twin classes that pass MMDetection's ``isinstance``.

Built through the registry while ``mmdet.models.losses`` is imported, a twin
of an mmdet loss is an instance of a class deriving from the mmloss class and
mmdet's: mmloss's chain first in the MRO, mmdet's ``__init__`` never run,
nothing of mmdet's visible but the ``isinstance``. The heads that rely on it
are tested in ``tests/test_heads.py``.
"""
import copy
import inspect
import io
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import mmloss
from mmloss.catalogue import MMDET_LOSS_NAMES
from mmloss.compat import (is_twin_class, mmdet_compatible, mmdet_only_names,
                           mmloss_class)
from tests.helpers import assert_close

mmdet_losses = pytest.importorskip('mmdet.models.losses')

# constructor arguments a twin needs beyond its defaults
REQUIRED = {'SeesawLoss': dict(num_classes=4),
            'CrossEntropyCustomLoss': dict(num_classes=4),
            'EQLV2Loss': dict(num_classes=4),
            'FocalCustomLoss': dict(num_classes=4)}
TWINS = sorted(n for n in mmloss.MODELS.module_dict if n in MMDET_LOSS_NAMES)


def run_fresh(code):
    result = subprocess.run([sys.executable, '-c', textwrap.dedent(code)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def build(name, **kwargs):
    return mmloss.MODELS.build(dict(type=name, **REQUIRED.get(name, {}),
                                    **kwargs))


@pytest.mark.parametrize('name', TWINS)
def test_every_twin_is_built_as_an_instance_of_both_classes(name):
    ours = mmloss.MODELS.module_dict[name]
    theirs = getattr(mmdet_losses, name)
    loss = build(name)
    cls = type(loss)
    assert is_twin_class(cls) and mmloss_class(loss) is ours
    assert isinstance(loss, ours) and isinstance(loss, theirs)
    assert (cls.__name__, cls.__qualname__, cls.__module__) == \
        (name, ours.__qualname__, ours.__module__)
    # mmloss's chain, then mmdet's, then nn.Module
    chain = [c for c in ours.__mro__ if c not in theirs.__mro__]
    assert list(cls.__mro__[1:1 + len(chain)]) == chain
    assert cls.__mro__[1 + len(chain)] is theirs
    assert cls.forward is ours.forward and cls.__init__ is ours.__init__
    # every name mmdet's classes define resolves as on ours, or is hidden
    for base in theirs.__mro__[:theirs.__mro__.index(nn.Module)]:
        for attr in vars(base):
            if attr in ('__module__', '__qualname__', '__doc__', '__dict__',
                        '__weakref__', '__abstractmethods__', '_abc_impl'):
                continue
            try:
                expected = inspect.getattr_static(ours, attr)
            except AttributeError:
                assert getattr(loss, attr, 'absent') == 'absent', attr
            else:
                assert inspect.getattr_static(cls, attr) is expected, attr
    # mmdet's __init__ never ran: the module holds exactly what ours holds
    plain = ours(**REQUIRED.get(name, {}))
    assert type(plain) is ours
    assert sorted(vars(loss)) == sorted(vars(plain))
    assert loss.state_dict().keys() == plain.state_dict().keys()
    assert repr(loss) == repr(plain)
    # cached: one twin class per mmloss class
    assert type(build(name)) is cls
    assert mmloss.MODELS.get(name) is cls and mmdet_compatible(ours) is cls


def test_names_only_mmdet_defines_are_hidden():
    """A method or class attribute only mmdet's class has would read mmdet's
    state; the twin class hides it so it looks exactly like mmloss's."""

    class Theirs(nn.Module):
        only_mmdet = 1

        def get_accuracy(self, x):
            return self.never_set

    loss = mmloss.SmoothL1Loss()
    hidden = mmdet_only_names(type(loss), Theirs)
    assert hidden == ('get_accuracy', 'only_mmdet')
    for name in TWINS:
        ours = mmloss.MODELS.module_dict[name]
        twin = type(build(name))
        for attr in mmdet_only_names(ours, getattr(mmdet_losses, name)):
            with pytest.raises(AttributeError, match=f'{name}: {attr!r}'):
                getattr(twin, attr)
            assert getattr(build(name), attr, 'absent') == 'absent'


def test_twin_computes_with_mmloss_forward_and_updates():
    loss = build('SmoothL1Loss', beta=0.5, loss_weight=2.0)
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(8, 4, generator=g), torch.randn(8, 4,
                                                              generator=g)
    assert_close(loss(pred, target),
                 mmloss.SmoothL1Loss(beta=0.5, loss_weight=2.0)(pred, target))
    loss.beta = 0.05  # what Dynamic R-CNN does
    assert_close(loss(pred, target),
                 mmdet_losses.SmoothL1Loss(beta=0.05, loss_weight=2.0)(
                     pred, target))


@pytest.mark.parametrize('name', ['SmoothL1Loss', 'QualityFocalLoss',
                                  'GHMC', 'CrossEntropyLoss'])
def test_pickle_deepcopy_and_state_dict_round_trip(name):
    loss = build(name, loss_weight=3.0)
    for copied in (pickle.loads(pickle.dumps(loss)), copy.deepcopy(loss)):
        assert type(copied) is type(loss)
        assert copied.loss_weight == 3.0 and copied is not loss
        assert repr(copied) == repr(loss)
        for key, value in loss.state_dict().items():
            assert torch.equal(copied.state_dict()[key], value)
    buffer = io.BytesIO()
    torch.save(nn.ModuleDict(dict(loss=loss)), buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)['loss']
    assert type(restored) is type(loss)
    plain = mmloss.MODELS.module_dict[name](**REQUIRED.get(name, {}))
    plain.load_state_dict(loss.state_dict())
    loss.load_state_dict(plain.state_dict())


def test_losses_without_an_mmdet_twin_stay_plain():
    for name in sorted(set(mmloss.MODELS.module_dict) - MMDET_LOSS_NAMES):
        assert mmloss.MODELS.get(name) is mmloss.MODELS.module_dict[name]

    # a subclass the registry does not hold under its name stays as it is
    class SmoothL1Loss(mmloss.SmoothL1Loss):
        pass

    assert mmdet_compatible(SmoothL1Loss) is SmoothL1Loss


def test_without_mmdet_imported_losses_are_plain_and_unpickle_plain():
    """``import mmloss`` imports neither mmdet nor mmcv; a loss built there
    is the plain class, and so is a twin-class instance unpickled there."""
    blob = pickle.dumps(build('QualityFocalLoss', beta=1.5))
    out = run_fresh(f"""
        import pickle, sys
        import mmloss
        loss = mmloss.MODELS.build(dict(type='SmoothL1Loss', beta=0.5))
        unpickled = pickle.loads({blob!r})
        heavy = sorted(m for m in sys.modules
                       if m.split('.')[0] in ('mmcv', 'mmdet'))
        print(len(heavy), type(loss) is mmloss.SmoothL1Loss,
              type(unpickled) is mmloss.QualityFocalLoss, unpickled.beta)
    """)
    assert out.split() == ['0', 'True', 'True', '1.5'], out


@pytest.mark.slow
def test_fresh_mmdet_process_builds_twin_classes():
    out = run_fresh("""
        from mmdet.registry import MODELS
        from mmdet.models.losses import QualityFocalLoss
        import mmloss
        loss = MODELS.build(dict(type='mmloss.QualityFocalLoss'))
        print(isinstance(loss, QualityFocalLoss),
              isinstance(loss, mmloss.QualityFocalLoss),
              type(loss).__name__)
    """)
    assert out.split() == ['True', 'True', 'QualityFocalLoss'], out
