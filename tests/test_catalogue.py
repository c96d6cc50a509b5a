"""The loss catalogue (`python -m mmloss list`) and the README table."""
import inspect
import json
import os.path as osp
import subprocess
import sys
import types

import pytest

import mmloss
from mmloss import catalogue as cat
from mmloss.__main__ import main
from mmloss.registry import MODELS

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
README = osp.join(REPO, 'README.md')


def registered_losses():
    return {
        name: cls
        for name, cls in MODELS.module_dict.items()
        if cls.__module__.startswith('mmloss.losses.')
    }


def test_catalogue_lists_every_registered_loss_once():
    entries = cat.catalogue()
    names = [e.name for e in entries]
    assert len(names) == len(set(names))
    assert set(names) == set(registered_losses())
    assert 'FocalLoss' in names


def test_family_is_the_defining_module():
    for entry in cat.catalogue():
        cls = MODELS.module_dict[entry.name]
        assert cls.__module__ == f'mmloss.losses.{entry.family}'
        module = getattr(mmloss.losses, entry.family)
        assert entry.name in module.__all__, (
            f'{entry.name} is registered but missing from '
            f'mmloss.losses.{entry.family}.__all__')


def test_arguments_show_defaults():
    entry = {e.name: e for e in cat.catalogue()}['FocalLoss']
    assert entry.arguments == (
        "use_sigmoid=True, gamma=2.0, alpha=0.25, reduction='mean', "
        'loss_weight=1.0, activated=False')


def test_arguments_of_required_and_variadic_parameters():

    class Odd:

        def __init__(self, required, *args, flag=None, **kwargs):
            pass

    assert cat.constructor_arguments(Odd) == \
        'required, *args, flag=None, **kwargs'


def test_twin_is_a_loss_of_the_same_name_in_mmdet():
    for entry in cat.catalogue():
        assert entry.mmdet_twin in (None, entry.name)
        assert (entry.mmdet_twin is not None) == (
            entry.name in cat.MMDET_LOSS_NAMES)
    twins = {e.name: e.mmdet_twin for e in cat.catalogue()}
    assert twins['FocalLoss'] == 'FocalLoss'


def test_static_twin_names_match_installed_mmdet(mmdet_losses):
    from mmdet.registry import MODELS as MMDET_MODELS
    installed = {
        name
        for name, cls in MMDET_MODELS.module_dict.items()
        if cls.__module__.startswith('mmdet.models.losses')
    }
    assert installed == set(cat.MMDET_LOSS_NAMES), (
        'update MMDET_LOSS_NAMES in mmloss/catalogue.py: missing '
        f'{sorted(installed - cat.MMDET_LOSS_NAMES)}, extra '
        f'{sorted(cat.MMDET_LOSS_NAMES - installed)}')


def test_twins_take_the_same_constructor_arguments(mmdet_losses):
    from mmdet.registry import MODELS as MMDET_MODELS
    for entry in cat.catalogue():
        if entry.mmdet_twin:
            theirs = MMDET_MODELS.module_dict[entry.mmdet_twin]
            assert entry.arguments == cat.constructor_arguments(theirs), \
                entry.name


def test_catalogue_does_not_import_mmdet():
    # The core must stay importable with torch + mmengine only.
    code = ('import sys, mmloss.catalogue as c; c.catalogue(); '
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('mmdet', 'mmcv', 'matplotlib')]; "
            'print(bad); sys.exit(1 if bad else 0)')
    done = subprocess.run([sys.executable, '-c', code], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_paper_from_class_docstring_then_family_then_dash():
    family = types.ModuleType('mmloss.losses.fake_family')
    family.__doc__ = 'A family.\n\nPaper: Family et al., 2020\n'

    class WithPaper:
        """A loss.

        Paper: Lin et al., "Focal Loss", ICCV 2017, https://arxiv.org/x
        """

    class WithoutPaper:
        """A loss that names no paper."""

    for cls in (WithPaper, WithoutPaper):
        cls.__module__ = family.__name__
    sys.modules[family.__name__] = family
    try:
        assert cat.paper_of(WithPaper) == (
            'Lin et al., "Focal Loss", ICCV 2017, https://arxiv.org/x',
            'class')
        assert cat.paper_of(WithoutPaper) == ('Family et al., 2020',
                                              'family')
        family.__doc__ = 'No paper here.'
        assert cat.paper_of(WithoutPaper) == ('-', 'none')
    finally:
        del sys.modules[family.__name__]


def test_several_paper_lines_are_joined():
    doc = 'Loss.\n\n    Paper: A, 2017\n    Paper: B, 2022\n'
    assert cat.paper_lines(doc) == ['A, 2017', 'B, 2022']


def test_markdown_has_one_row_per_loss_and_escapes_pipes():
    entries = cat.catalogue()
    table = cat.render_markdown(entries)
    rows = table.strip().splitlines()
    assert rows[0].startswith('| Loss')
    assert len(rows) == 2 + len(entries)
    assert all(row.count(' | ') == 4 for row in rows[2:])
    odd = cat.LossEntry('X', 'f', None, "a='|'", 'P | Q', 'class')
    row = cat.render_markdown([odd]).splitlines()[-1]
    assert row == "| `mmloss.X` | f | - | `a='\\|'` | P \\| Q |"


def test_cli_text_markdown_json(capsys):
    names = {e.name for e in cat.catalogue()}
    assert main(['list']) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in names)
    assert f'{len(names)} losses' in text

    assert main(['list', '--format', 'markdown']) == 0
    assert capsys.readouterr().out == cat.render_markdown(cat.catalogue())

    assert main(['list', '--format', 'json', '--family', 'focal']) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r['name'] for r in rows} >= {'FocalLoss'}
    assert {r['family'] for r in rows} == {'focal'}


def test_cli_unknown_family_fails_clearly(capsys):
    with pytest.raises(SystemExit) as exc:
        main(['list', '--family', 'no_such_family'])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert 'unknown family no_such_family' in err and 'focal' in err


def test_python_dash_m_entry_point():
    done = subprocess.run(
        [sys.executable, '-m', 'mmloss', 'list', '--format', 'markdown'],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert '| `mmloss.FocalLoss` | focal | `FocalLoss` |' in done.stdout


def test_update_and_check_readme_touch_only_the_block(tmp_path, capsys):
    readme = tmp_path / 'README.md'
    before = '# Title\n\nintro\n\n'
    after = '\n\n## Later\n\ntext\n'
    readme.write_text(before + cat.README_START + '\nold table\n' +
                      cat.README_END + after)
    assert main(['list', '--check-readme', str(readme)]) == 1
    assert 'stale' in capsys.readouterr().err
    assert main(['list', '--update-readme', str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(before + cat.README_START + '\n| Loss')
    assert text.endswith(cat.README_END + after)
    assert cat.readme_block(text) == cat.render_markdown(cat.catalogue())
    assert main(['list', '--check-readme', str(readme)]) == 0


def test_update_readme_without_markers_fails_clearly(tmp_path, capsys):
    readme = tmp_path / 'README.md'
    readme.write_text('# no markers\n')
    with pytest.raises(SystemExit):
        main(['list', '--update-readme', str(readme)])
    assert 'catalogue:start' in capsys.readouterr().err
    assert readme.read_text() == '# no markers\n'


def test_readme_table_is_current():
    with open(README, encoding='utf-8') as f:
        block = cat.readme_block(f.read())
    assert block is not None, (
        f'README.md has no {cat.README_START} ... {cat.README_END} block')
    assert block == cat.render_markdown(cat.catalogue()), (
        'README loss table is stale: run '
        '`python -m mmloss list --update-readme README.md`')


def test_every_catalogue_entry_has_a_signature():
    for entry in cat.catalogue():
        inspect.signature(MODELS.module_dict[entry.name])
