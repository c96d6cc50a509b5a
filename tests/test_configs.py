"""Every config under configs/ loads, names mmloss losses and builds.

Fast tests (no training): the configs parse, every loss they configure is an
mmloss loss, the models build with mmloss modules in place, the shapes
dataset builds from the generator's output, and tools/train.py turns its
command line into the right config (loss swaps by --cfg-options, --resume,
--auto-scale-lr, gloo for CPU launchers).
"""
import glob
import importlib.util
import json
import os.path as osp

import pytest

pytest.importorskip('mmdet')

from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

import mmloss  # noqa: E402
from mmloss import compat  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(ROOT, 'configs')
ALL_CONFIGS = sorted(
    osp.relpath(p, ROOT)
    for p in glob.glob(osp.join(CONFIG_DIR, '**', '*.py'), recursive=True)
    if '_base_' not in p)
COCO_CONFIGS = [c for c in ALL_CONFIGS if c.startswith('configs/coco/')]
SHAPES_CONFIGS = [c for c in ALL_CONFIGS if c not in COCO_CONFIGS]
DEFAULT_CONFIG = 'configs/retinanet/retinanet_r18_focal_shapes.py'

# The headline losses and the configs that must use them, by name.
HEADLINE = {
    'configs/retinanet/retinanet_r18_focal_shapes.py': ['mmloss.FocalLoss'],
    'configs/retinanet/retinanet_r18_ghm_shapes.py':
    ['mmloss.GHMC', 'mmloss.GHMR'],
    'configs/retinanet/retinanet_r18_giou_shapes.py': ['mmloss.GIoULoss'],
    'configs/faster_rcnn/faster-rcnn_r18_balanced-l1_shapes.py':
    ['mmloss.BalancedL1Loss'],
    'configs/faster_rcnn/faster-rcnn_r18_bounded-iou_shapes.py':
    ['mmloss.BoundedIoULoss'],
    'configs/gfl/gfl_r18_qfl-dfl_shapes.py':
    ['mmloss.QualityFocalLoss', 'mmloss.DistributionFocalLoss'],
    'configs/retinanet/retinanet_r18_wise-iou_shapes.py':
    ['mmloss.WiseIoULoss'],
    'configs/coco/retinanet_r50_fpn_ghm-1x_coco.py':
    ['mmloss.GHMC', 'mmloss.GHMR'],
    'configs/coco/libra-faster-rcnn_r50_fpn_1x_coco.py':
    ['mmloss.BalancedL1Loss'],
}


def load_tool(name):
    """Import ``tools/<name>.py`` as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        f'mmloss_tools_{name}', osp.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def loss_configs(node, path='model'):
    """``{dotted path: loss config}`` for every ``loss_*`` dict in a model."""
    found = {}
    if isinstance(node, dict):
        for key, value in node.items():
            if key.startswith('loss') and isinstance(value, dict) \
                    and 'type' in value:
                found[f'{path}.{key}'] = value
            else:
                found.update(loss_configs(value, f'{path}.{key}'))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            found.update(loss_configs(value, f'{path}[{i}]'))
    return found


def mmloss_class(type_name):
    assert type_name.startswith('mmloss.'), type_name
    return getattr(mmloss, type_name.split('.', 1)[1])


def skip_if_losses_missing(cfg):
    """Skip while a loss the config names is not yet in mmloss.

    The loss families are written in parallel with the configs; once every
    family has landed nothing is skipped.
    """
    missing = sorted({
        c['type'] for c in loss_configs(cfg.model).values()
        if c['type'].startswith('mmloss.')
        and not hasattr(mmloss, c['type'].split('.', 1)[1])})
    if missing:
        pytest.skip(f'not in mmloss yet: {missing}')


@pytest.fixture(scope='module')
def shapes_root():
    """The generated shapes dataset under data/ (generated once if absent)."""
    maker = load_tool('make_shapes_dataset')
    return maker.ensure_shapes_dataset(osp.join(ROOT, 'data', 'shapes'))


def test_every_config_found():
    assert DEFAULT_CONFIG in ALL_CONFIGS
    assert set(HEADLINE) <= set(ALL_CONFIGS)
    assert len(COCO_CONFIGS) >= 2


@pytest.mark.parametrize('config', ALL_CONFIGS)
def test_config_builds_model_with_mmloss_losses(config):
    cfg = Config.fromfile(osp.join(ROOT, config))
    skip_if_losses_missing(cfg)
    losses = loss_configs(cfg.model)
    types = sorted({c['type'] for c in losses.values()})
    for name in HEADLINE.get(config, []):
        assert name in types, f'{config} does not use {name}: {types}'
    if config in SHAPES_CONFIGS:
        # The bundled configs use mmloss for every loss they configure.
        assert all(t.startswith('mmloss.') for t in types), types

    init_default_scope(cfg.get('default_scope', 'mmdet'))
    from mmdet.registry import MODELS
    model = MODELS.build(cfg.model)
    built = {compat.mmloss_class(m) for m in model.modules()}
    for name in types:
        if name.startswith('mmloss.'):
            assert mmloss_class(name) in built, f'{name} not built'
    if config in SHAPES_CONFIGS:
        # Trained from scratch: no pretrained weights are requested.
        assert cfg.model.backbone.get('init_cfg') is None


@pytest.mark.parametrize('config', SHAPES_CONFIGS)
def test_shapes_config_builds_datasets(config, shapes_root, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = Config.fromfile(osp.join(ROOT, config))
    assert osp.normpath(cfg.shapes_dataset.out_dir) == 'data/shapes'
    init_default_scope('mmdet')
    from mmdet.registry import DATASETS
    train = DATASETS.build(cfg.train_dataloader.dataset)
    val = DATASETS.build(cfg.val_dataloader.dataset)
    assert len(train) == 300 and len(val) == 100
    assert train.metainfo['classes'] == ('circle', 'square', 'triangle')
    sample = train[0]
    assert tuple(sample['inputs'].shape) == (3, 128, 128)
    assert len(sample['data_samples'].gt_instances) >= 1


def test_shapes_dataset_is_deterministic(tmp_path, shapes_root):
    maker = load_tool('make_shapes_dataset')
    # Regenerating one split from its seed gives the same bytes.
    maker.write_split(str(tmp_path), 'val', *maker.SPLITS['val'])
    for rel in ['annotations/val.json', 'val/000000.png', 'val/000099.png']:
        with open(osp.join(shapes_root, rel), 'rb') as a, \
                open(osp.join(tmp_path, rel), 'rb') as b:
            assert a.read() == b.read(), rel
    with open(osp.join(shapes_root, 'annotations', 'train.json')) as f:
        coco = json.load(f)
    assert [c['name'] for c in coco['categories']] == list(maker.CLASSES)
    for ann in coco['annotations']:
        x, y, w, h = ann['bbox']
        assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128
        assert maker.MIN_SIZE - 2 <= max(w, h) <= maker.MAX_SIZE + 2


def test_png_encoder_roundtrip(tmp_path):
    import mmcv
    import numpy as np
    maker = load_tool('make_shapes_dataset')
    image = np.random.default_rng(0).integers(0, 256, (7, 5, 3), np.uint8)
    path = tmp_path / 'x.png'
    path.write_bytes(maker.encode_png(image))
    decoded = mmcv.imread(str(path), channel_order='rgb')
    np.testing.assert_array_equal(decoded, image)


def test_cfg_options_swap_loss():
    train = load_tool('train')
    init_default_scope('mmdet')
    from mmdet.registry import MODELS
    from mmdet.models.losses import FocalLoss as MMDetFocalLoss

    args = train.parse_args([
        DEFAULT_CONFIG, '--cfg-options',
        'model.bbox_head.loss_cls.type=FocalLoss'])
    cfg = train.build_config(args)
    skip_if_losses_missing(cfg)
    head = MODELS.build(cfg.model).bbox_head
    assert type(head.loss_cls) is MMDetFocalLoss

    args = train.parse_args([
        'configs/retinanet/retinanet_r18_giou_shapes.py', '--cfg-options',
        'model.bbox_head.loss_bbox.type=mmloss.DIoULoss'])
    cfg = train.build_config(args)
    skip_if_losses_missing(cfg)
    head = MODELS.build(cfg.model).bbox_head
    assert compat.mmloss_class(head.loss_bbox) is mmloss.DIoULoss
    assert compat.mmloss_class(head.loss_cls) is mmloss.FocalLoss


def test_train_command_line_options(tmp_path):
    train = load_tool('train')
    cfg = train.build_config(train.parse_args([DEFAULT_CONFIG]))
    assert cfg.work_dir == './work_dirs/retinanet_r18_focal_shapes'
    assert not cfg.resume and cfg.launcher == 'none'

    cfg = train.build_config(train.parse_args(
        [DEFAULT_CONFIG, '--work-dir', str(tmp_path), '--resume',
         '--auto-scale-lr']))
    assert cfg.work_dir == str(tmp_path)
    assert cfg.resume is True and cfg.load_from is None
    assert cfg.auto_scale_lr.enable is True

    cfg = train.build_config(train.parse_args(
        [DEFAULT_CONFIG, '--resume', 'ckpt.pth']))
    assert cfg.resume is True and cfg.load_from == 'ckpt.pth'


def test_cpu_launcher_uses_gloo():
    import torch
    if torch.cuda.is_available():
        pytest.skip('gloo is only forced without CUDA')
    train = load_tool('train')
    cfg = train.build_config(train.parse_args(
        [DEFAULT_CONFIG, '--launcher', 'pytorch']))
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.device_ids is None
    with pytest.raises(SystemExit, match='amp'):
        train.build_config(train.parse_args([DEFAULT_CONFIG, '--amp']))
