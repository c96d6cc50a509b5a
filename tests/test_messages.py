"""Messages a newcomer meets: an unknown ``mmloss.*`` type says what was meant.

Covers :mod:`mmloss.suggest`: the did-you-mean ``KeyError`` raised through
``mmloss.MODELS`` and through mmdet's registry (which walks the root down to
the ``mmloss`` scope), and that known names and other scopes are unchanged.
"""
import pytest

import mmloss
from mmloss.registry import MODELS
from mmloss.suggest import UnknownLossError, closest_names


def test_closest_names_ignores_case_and_keeps_spelling():
    names = ['GIoULoss', 'IoULoss', 'FocalLoss', 'GHMC']
    assert closest_names('GIoULos', names)[0] == 'GIoULoss'
    assert closest_names('giouloss', names)[0] == 'GIoULoss'
    assert closest_names('focal_loss', names) == ['FocalLoss']
    assert closest_names('Zzzqqq', names) == []


@pytest.mark.parametrize('cfg', [
    dict(type='GIoULos'),
    dict(type='mmloss.GIoULos'),
    dict(type='mmloss.giouloss'),
])
def test_mmloss_registry_suggests_the_closest_name(cfg):
    with pytest.raises(KeyError) as info:
        MODELS.build(cfg)
    assert isinstance(info.value, UnknownLossError)
    message = str(info.value)
    assert message.startswith(
        'mmloss.' + cfg['type'].split('.')[-1] + ' is not a registered')
    assert 'did you mean `mmloss.GIoULoss`?' in message
    assert info.value.suggestions[0] == 'GIoULoss'


def test_mmdet_registry_reaches_the_suggestion():
    mmdet_registry = pytest.importorskip('mmdet.registry')
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    with pytest.raises(KeyError, match='did you mean `mmloss.FocalLoss`'):
        mmdet_registry.MODELS.build(
            dict(type='mmloss.FocalLos', use_sigmoid=True))
    with pytest.raises(KeyError,
                       match=r'did you mean `mmloss\.GIoULoss`\?'):
        mmdet_registry.MODELS.build(dict(type='mmloss.GIoULos'))
    # The right names and mmdet's own lookups are untouched.
    assert isinstance(
        mmdet_registry.MODELS.build(dict(type='mmloss.GIoULoss')),
        mmloss.GIoULoss)
    assert mmdet_registry.MODELS.get('NoSuchLossAnywhere') is None


def test_unrelated_name_lists_no_guess_but_points_to_the_list():
    with pytest.raises(KeyError) as info:
        MODELS.build(dict(type='Zzzqqq'))
    assert info.value.suggestions == []
    assert 'python -m mmloss list' in str(info.value)
    assert f'lists all {len(MODELS.module_dict)}' in str(info.value)


def test_membership_and_other_scopes_still_answer_plainly():
    assert 'GIoULoss' in MODELS
    assert 'GIoULos' not in MODELS
    # (a subclass while mmdet's losses are imported: mmloss.compat's twin)
    assert issubclass(MODELS.get('GIoULoss'), mmloss.GIoULoss)
    # A key of another scope is not ours to correct: MMEngine's None.
    assert MODELS.get('nosuchscope.GIoULos') is None
