"""The README's "installing elsewhere" path, in a fresh virtual environment.

Slow. The steps are the README's: ``python -m venv``, ``pip install
torch==2.13.0``, mmcv by the usual route (here the prebuilt wheel in
``../shared/wheels``; compiling it takes ~16 minutes, so without the wheel the
test skips), then ``pip install ".[mmdet]"``. Before the last step
setuptools is upgraded to the newest release pip can reach, as a toolchain
upgrade leaves it: with setuptools 81+ mmengine cannot resolve an ``mmdet::``
base (``No module named 'pkg_resources'``), and the ``mmdet`` extra's
``setuptools<81`` must bring it back down. The environment then loads an
``mmdet::`` config and runs the loss it names.

Offline machines: pip uses whatever indexes and ``--find-links`` its own
configuration names. Releases that no configured source holds but that this
test process has installed as pure-Python wheels (on the machine this was
written on: mmengine, mmdet, addict, yapf, terminaltables) are repacked from
the installed files into a temporary wheelhouse, the same releases the
development environment got from PyPI. If torch==2.13.0 itself cannot be
installed, the test skips with pip's reason.
"""
import csv
import glob
import importlib.metadata as metadata
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SHARED_WHEELS = osp.join(osp.dirname(ROOT), 'shared', 'wheels')
# Pure-Python releases of the mmdet stack that offline indexes tend to lack.
REPACKED = ('mmengine', 'mmdet', 'addict', 'yapf', 'terminaltables')
CONFIG = osp.join(ROOT, 'configs', 'coco',
                  'retinanet_r50_fpn_focal_1x_coco.py')

pytestmark = pytest.mark.slow


def repack_wheel(name, out_dir):
    """Write the installed pure-Python distribution ``name`` as a wheel."""
    dist = metadata.distribution(name)
    wheel_info = dist.read_text('WHEEL') or ''
    if 'Root-Is-Purelib: true' not in wheel_info:
        return None
    tag = re.sub(r'[^\w.]+', '_', dist.metadata['Name'])
    path = osp.join(out_dir, f'{tag}-{dist.version}-py3-none-any.whl')
    site = str(dist.locate_file(''))
    rows = []
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as wheel:
        for file in dist.files:
            rel = str(file)
            if rel.startswith('..') or '__pycache__' in rel \
                    or rel.endswith(('.pyc', 'RECORD', 'INSTALLER',
                                     'direct_url.json')):
                continue
            wheel.write(osp.join(site, rel), rel)
            rows.append((rel, '', ''))
        record = next(str(f) for f in dist.files
                      if str(f).endswith('.dist-info/RECORD'))
        rows.append((record, '', ''))
        lines = []
        writer = csv.writer(_Lines(lines), lineterminator='\n')
        writer.writerows(rows)
        wheel.writestr(record, ''.join(lines))
    return path


class _Lines:
    """A minimal file-like sink for :mod:`csv`."""

    def __init__(self, lines):
        self.lines = lines

    def write(self, text):
        self.lines.append(text)


def run(cmd, cwd, timeout=900):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ,
                                                'PIP_NO_INPUT': '1'})


def tail(result):
    return (result.stdout + result.stderr)[-3000:]


CHECK = '''
import json, sys
import setuptools
import pkg_resources  # what mmengine needs for mmdet:: bases
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
import mmloss
cfg = Config.fromfile(sys.argv[1])
init_default_scope('mmdet')
from mmdet.registry import MODELS
loss_cls = MODELS.build(cfg.model.bbox_head.loss_cls)
logits = torch.randn(50, 80, requires_grad=True)
labels = torch.randint(0, 81, (50,))
value = loss_cls(logits, labels, avg_factor=10)
value.backward()
print(json.dumps(dict(
    setuptools=setuptools.__version__, mmloss_file=mmloss.__file__,
    loss_type=type(loss_cls).__module__ + '.' + type(loss_cls).__name__,
    value=float(value), grad_finite=bool(torch.isfinite(logits.grad).all()),
)))
'''


def test_fresh_venv_installs_and_loads_mmdet_config(tmp_path):
    if not glob.glob(osp.join(SHARED_WHEELS, 'mmcv-*.whl')):
        pytest.skip(f'no prebuilt mmcv wheel in {SHARED_WHEELS}; a source '
                    'build takes ~16 minutes')
    venv = tmp_path / 'venv'
    made = run([sys.executable, '-m', 'venv', str(venv)], tmp_path)
    assert made.returncode == 0, tail(made)
    python = str(venv / 'bin' / 'python')
    pip = [python, '-m', 'pip', 'install', '--retries', '1']

    torch_step = run(pip + ['torch==2.13.0'], tmp_path)
    if torch_step.returncode != 0:
        pytest.skip('a fresh venv cannot install torch==2.13.0 here: '
                    + tail(torch_step)[-500:])

    # A newer toolchain, as upgrading setuptools (or Python 3.12+'s venv,
    # which has none) leaves it.
    upgrade = run(pip + ['-U', 'setuptools'], tmp_path)
    assert upgrade.returncode == 0, tail(upgrade)

    wheelhouse = tmp_path / 'wheelhouse'
    wheelhouse.mkdir()
    for name in REPACKED:
        repack_wheel(name, str(wheelhouse))
    links = ['--find-links', str(wheelhouse), '--find-links', SHARED_WHEELS]
    mmcv = run(pip + links + ['mmcv>=2.0.0rc4,<2.2.0'], tmp_path)
    assert mmcv.returncode == 0, tail(mmcv)

    # The user's checkout: what setup.py packages (no build files in ROOT).
    src = tmp_path / 'src'
    shutil.copytree(osp.join(ROOT, 'mmloss'), src / 'mmloss',
                    ignore=shutil.ignore_patterns('__pycache__'))
    for name in ('setup.py', 'README.md'):
        shutil.copy(osp.join(ROOT, name), src / name)
    installed = run(pip + links + [f'{src}[mmdet]'], tmp_path)
    assert installed.returncode == 0, tail(installed)

    checked = run([python, '-c', textwrap.dedent(CHECK), CONFIG], tmp_path)
    assert checked.returncode == 0, tail(checked)
    report = json.loads(checked.stdout.strip().splitlines()[-1])
    major = int(report['setuptools'].split('.')[0])
    assert major < 81, report
    assert report['mmloss_file'].startswith(str(venv)), report
    assert report['loss_type'] == 'mmloss.losses.focal.FocalLoss', report
    assert report['value'] > 0 and report['grad_finite'], report
