"""The "your config, your data" recipes under configs/recipes/.

Fast: each recipe inherits only an MMDetection zoo config (``mmdet::``),
names mmloss losses, needs no download (no pretrained ``init_cfg``), decodes
boxes before an IoU-family loss, and points at the bundled shapes dataset;
the pitfall the README warns about (a second base defining the dataset keys)
really fails as documented. Slow: ``tools/train.py`` trains a recipe for a
few iterations with finite losses and a GIoU term in its range.
"""
import glob
import json
import math
import os.path as osp
import subprocess
import sys

import pytest

pytest.importorskip('mmdet')

from mmengine.config import Config  # noqa: E402

from tests.test_configs import ROOT, load_tool, loss_configs  # noqa: E402

RECIPES = sorted(
    osp.relpath(p, ROOT)
    for p in glob.glob(osp.join(ROOT, 'configs', 'recipes', '*.py')))
GIOU_RECIPE = 'configs/recipes/retinanet_r50_fpn_giou_your-data.py'
# Losses that compare boxes, so the head must decode its deltas first.
BOX_LOSSES = ('IoU', 'GIoU', 'DIoU', 'CIoU', 'EIoU', 'SIoU', 'NWD')


def test_the_giou_recipe_is_shipped():
    assert GIOU_RECIPE in RECIPES


@pytest.mark.parametrize('recipe', RECIPES)
def test_recipe_inherits_only_a_zoo_config(recipe):
    cfg = Config.fromfile(osp.join(ROOT, recipe), lazy_import=False)
    with open(osp.join(ROOT, recipe)) as f:
        source = f.read()
    bases = [line for line in source.splitlines()
             if line.startswith('_base_')]
    assert len(bases) == 1 and "'mmdet::" in bases[0], bases
    # No download: the zoo's torchvision:// init_cfg is dropped.
    assert cfg.model.backbone.get('init_cfg') is None
    losses = loss_configs(cfg.model)
    assert losses and all(
        c['type'].startswith('mmloss.') for c in losses.values()), losses
    for path, loss in losses.items():
        if any(k in loss['type'] for k in BOX_LOSSES):
            head = cfg.model
            for key in path.split('.')[1:-1]:
                head = head[key]
            assert head.get('reg_decoded_bbox') is True, path
    # The worked example: the bundled shapes dataset, generated on first use.
    assert osp.normpath(cfg.shapes_dataset.out_dir) == 'data/shapes'
    classes = cfg.train_dataloader.dataset.metainfo['classes']
    assert cfg.model.bbox_head.num_classes == len(classes)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[loader].dataset.data_root == cfg.data_root, loader
    assert cfg.val_evaluator.ann_file.startswith(cfg.data_root)


def test_a_second_dataset_base_fails_as_the_readme_says(tmp_path):
    # The pitfall the recipe avoids: zoo model config + our dataset config in
    # one _base_ list.
    dataset = osp.join(ROOT, 'configs', '_base_', 'datasets',
                       'shapes_detection.py')
    path = tmp_path / 'two_bases.py'
    path.write_text(
        "_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', "
        f'{dataset!r}]\n')
    with pytest.raises(KeyError, match='Duplicate key is not allowed'):
        Config.fromfile(str(path))


@pytest.mark.slow
def test_giou_recipe_trains_with_finite_losses(tmp_path):
    load_tool('make_shapes_dataset').ensure_shapes_dataset(
        osp.join(ROOT, 'data', 'shapes'))
    iters = 4
    work_dir = tmp_path / 'work'
    options = [
        'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
        'train_dataloader.batch_size=2',
        f'train_dataloader.dataset.indices={list(range(2 * iters))}',
        'val_dataloader.dataset.indices=[0,1]',
        'default_hooks.logger.interval=1',
        'default_hooks.checkpoint.interval=1000',
        'default_hooks.checkpoint.save_last=False',
    ]
    result = subprocess.run(
        [sys.executable, osp.join('tools', 'train.py'), GIOU_RECIPE,
         '--work-dir', str(work_dir), '--cfg-options', *options],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert 'box mAP (val):' in result.stdout
    scalars = glob.glob(str(work_dir / '*' / 'vis_data' / 'scalars.json'))
    assert len(scalars) == 1, scalars
    with open(scalars[0]) as f:
        logged = [json.loads(line) for line in f if line.strip()]
    train = [r for r in logged if 'loss' in r]
    assert len(train) == iters, logged
    for record in train:
        assert all(math.isfinite(record[k])
                   for k in ('loss', 'loss_cls', 'loss_bbox')), record
        # GIoU loss lies in [0, 2], times loss_weight=2: a negative value is
        # the symptom of a missing reg_decoded_bbox=True.
        assert 0 <= record['loss_bbox'] <= 4, record
