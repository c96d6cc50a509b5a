"""The registry contract: scoped lookup from mmdet, custom_imports, no pollution.

Lookups that must work "in a fresh process that never imported mmloss" run in
a subprocess, since this test process imports mmloss.
"""
import subprocess
import sys
import textwrap

import pytest
from mmengine.registry import MODELS as ROOT_MODELS
from torch import nn

import mmloss
from mmloss.compat import mmloss_class
from mmloss.registry import MODELS

# Losses whose lookup from a fresh mmdet process is checked.
SAMPLE_LOSSES = ('FocalLoss', 'GHMC', 'GIoULoss', 'CrossEntropyLoss')


def run_fresh(code):
    """Run ``code`` in a fresh interpreter; return its stdout."""
    result = subprocess.run([sys.executable, '-c', textwrap.dedent(code)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_registry_is_a_scoped_child_of_the_root():
    assert MODELS.scope == 'mmloss'
    assert MODELS.parent is ROOT_MODELS
    assert ROOT_MODELS.children['mmloss'] is MODELS
    assert mmloss.MODELS is MODELS


def test_a_class_registered_here_resolves_from_mmdet_registry():
    mmdet_registry = pytest.importorskip('mmdet.registry')

    class ProbeLoss(nn.Module):
        pass

    MODELS.register_module(name='_ProbeLoss', module=ProbeLoss)
    try:
        assert mmdet_registry.MODELS.get('mmloss._ProbeLoss') is ProbeLoss
        built = mmdet_registry.MODELS.build(dict(type='mmloss._ProbeLoss'))
        assert isinstance(built, ProbeLoss)
        assert '_ProbeLoss' not in mmdet_registry.MODELS.module_dict
        assert mmdet_registry.MODELS.get('_ProbeLoss') is None
    finally:
        MODELS.module_dict.pop('_ProbeLoss')


def test_import_mmloss_needs_neither_mmcv_nor_mmdet():
    out = run_fresh("""
        import sys
        import mmloss
        heavy = sorted(m for m in sys.modules
                       if m.split('.')[0] in ('mmcv', 'mmdet'))
        print(len(heavy), heavy[:5])
    """)
    assert out.split()[0] == '0', out


def test_fresh_mmdet_process_resolves_scoped_names_without_imports():
    pytest.importorskip('mmdet')
    out = run_fresh(f"""
        import sys
        from mmdet.registry import MODELS
        assert 'mmloss' not in sys.modules
        for name in {SAMPLE_LOSSES!r}:
            cls = MODELS.get('mmloss.' + name)
            print(name, cls.__module__)
    """)
    lines = dict(line.split() for line in out.strip().splitlines())
    assert set(lines) == set(SAMPLE_LOSSES)
    for name, module in lines.items():
        assert module.startswith('mmloss.losses.'), (name, module)


def test_fresh_mmdet_config_with_default_scope_builds_mmloss_losses():
    pytest.importorskip('mmdet')
    out = run_fresh("""
        from mmengine.registry import DefaultScope
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        register_all_modules(init_default_scope=True)
        assert DefaultScope.get_current_instance().scope_name == 'mmdet'
        ghmc = MODELS.build(dict(type='mmloss.GHMC', bins=30, momentum=0.75))
        focal = MODELS.build(dict(type='FocalLoss'))
        ours = MODELS.build(dict(type='mmloss.FocalLoss', gamma=1.5))
        print(type(ghmc).__module__, ghmc.bins)
        print(type(focal).__module__)
        print(type(ours).__module__, ours.gamma)
    """)
    ghmc, focal, ours = out.strip().splitlines()
    assert ghmc == 'mmloss.losses.ghm 30'
    # an unscoped name stays mmdet's own loss
    assert focal.startswith('mmdet.models.losses')
    assert ours == 'mmloss.losses.focal 1.5'


def test_custom_imports_in_a_config_file(tmp_path):
    pytest.importorskip('mmdet')
    config = tmp_path / 'cfg.py'
    config.write_text(textwrap.dedent("""
        default_scope = 'mmdet'
        custom_imports = dict(imports=['mmloss'], allow_failed_imports=False)
        loss = dict(type='mmloss.GIoULoss', loss_weight=2.0)
    """))
    out = run_fresh(f"""
        import sys
        from mmengine.config import Config
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        register_all_modules()
        cfg = Config.fromfile({str(config)!r})
        print('mmloss' in sys.modules)
        loss = MODELS.build(cfg.loss)
        print(type(loss).__module__, loss.loss_weight)
    """)
    imported, built = out.strip().splitlines()
    assert imported == 'True'
    assert built == 'mmloss.losses.iou 2.0'


def test_mmdet_registry_is_not_polluted():
    pytest.importorskip('mmdet')
    out = run_fresh("""
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        register_all_modules()
        before = dict(MODELS.module_dict)
        import mmloss
        from mmloss.registry import MODELS as OURS
        OURS.get('FocalLoss')  # triggers the lazy import of every location
        after = dict(MODELS.module_dict)
        assert before.keys() == after.keys(), set(after) - set(before)
        assert all(before[k] is after[k] for k in before)
        leaked = [k for k, v in after.items() if v.__module__.startswith('mmloss')]
        print(len(leaked), MODELS.get('FocalLoss').__module__)
    """)
    count, module = out.split()
    assert count == '0'
    assert module.startswith('mmdet.models.losses')


def test_every_registered_loss_lives_in_a_family_module():
    names = list(MODELS.module_dict)
    for name in names:
        cls = MODELS.get(name)
        assert cls.__module__.startswith('mmloss.losses.'), name
        # (while mmdet's losses are imported, a twin class deriving from
        # ours and mmdet's: mmloss.compat)
        assert mmloss_class(cls) is getattr(mmloss, name), name


def test_unprefixed_build_from_our_registry_stays_ours_under_mmdet_scope():
    pytest.importorskip('mmdet')
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):
        built = MODELS.build(dict(type='FocalLoss', gamma=1.0))
        prefixed = MODELS.build(dict(type='mmloss.GIoULoss'))
    assert mmloss_class(built) is mmloss.FocalLoss and built.gamma == 1.0
    assert mmloss_class(prefixed) is mmloss.GIoULoss
