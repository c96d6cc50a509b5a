"""mmloss.swap and ``python -m mmloss swap``: one flag swaps a config's losses.

Checked on MMDetection zoo configs loaded through ``mmdet::`` (RetinaNet,
Faster R-CNN, GFL, DINO with its match costs), on every shipped config, and
on hand-written dicts for the prefixes and the cases that must stay as they
are.
"""
import glob
import os.path as osp
import re

import pytest

import mmloss
from mmloss import swap
from mmloss.__main__ import main
from mmloss.catalogue import MMDET_LOSS_NAMES

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SHIPPED = sorted(
    p for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                         recursive=True)
    if '_base_' not in p.split(osp.sep))


def loss_types(node, path=''):
    """``{path: type}`` of every dict in ``node`` whose type is a loss."""
    found = {}
    if isinstance(node, dict):
        t = node.get('type')
        if isinstance(t, str) and t.rpartition('.')[2] in (
                MMDET_LOSS_NAMES | set(mmloss.MODELS.module_dict)):
            found[path] = t
        for key, value in node.items():
            found.update(loss_types(value, f'{path}.{key}' if path else key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            found.update(loss_types(value, f'{path}[{i}]'))
    return found


ZOO = {
    'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py': {
        'model.bbox_head.loss_cls': 'FocalLoss',
        'model.bbox_head.loss_bbox': 'L1Loss'},
    'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py': {
        'model.rpn_head.loss_cls': 'CrossEntropyLoss',
        'model.rpn_head.loss_bbox': 'L1Loss',
        'model.roi_head.bbox_head.loss_cls': 'CrossEntropyLoss',
        'model.roi_head.bbox_head.loss_bbox': 'L1Loss'},
    'mmdet::gfl/gfl_r50_fpn_1x_coco.py': {
        'model.bbox_head.loss_cls': 'QualityFocalLoss',
        'model.bbox_head.loss_dfl': 'DistributionFocalLoss',
        'model.bbox_head.loss_bbox': 'GIoULoss'},
}


@pytest.mark.parametrize('path', sorted(ZOO))
def test_zoo_config_through_mmdet_base(path):
    pytest.importorskip('mmdet')
    cfg = swap.load_config(path)
    new_cfg, rows = swap.swap_losses(cfg)
    expected = ZOO[path]
    assert [(r.path, r.old_type, r.new_type, r.status) for r in rows] == [
        (p, t, 'mmloss.' + t, swap.SWAPPED) for p, t in expected.items()]
    assert loss_types(new_cfg.to_dict()) == {
        p: 'mmloss.' + t for p, t in expected.items()}
    # the input is not changed, and nothing but the types is
    assert loss_types(cfg.to_dict()) == expected
    back = new_cfg.to_dict()
    for p in expected:
        node = back
        for key in p.split('.'):
            node = node[key]
        node['type'] = expected[p]
    assert back == cfg.to_dict()


def test_swapped_zoo_head_builds_mmloss_losses():
    mmdet_models = pytest.importorskip('mmdet.registry').MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    new_cfg, _ = swap.swap_losses(
        swap.load_config('mmdet::gfl/gfl_r50_fpn_1x_coco.py'))
    head = mmdet_models.build(new_cfg.model.bbox_head)
    for name in ('loss_cls', 'loss_dfl', 'loss_bbox'):
        loss = getattr(head, name)
        assert isinstance(loss, mmloss.MODELS.module_dict[
            type(loss).__name__]), name


def test_match_costs_and_other_types_are_not_touched():
    pytest.importorskip('mmdet')
    cfg = swap.load_config('mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py')
    new_cfg, rows = swap.swap_losses(cfg)
    assert {r.path for r in rows} == {
        'model.bbox_head.loss_cls', 'model.bbox_head.loss_bbox',
        'model.bbox_head.loss_iou'}
    assert new_cfg.model.train_cfg == cfg.model.train_cfg
    costs = [c['type'] for c in
             new_cfg.model.train_cfg.assigner.match_costs]
    assert costs == ['FocalLossCost', 'BBoxL1Cost', 'IoUCost']
    assert new_cfg.model.bbox_head.loss_cls.type == 'mmloss.FocalLoss'


def test_prefixes_lists_and_losses_without_a_twin(monkeypatch):
    monkeypatch.setattr(swap, 'MMDET_LOSS_NAMES',
                        MMDET_LOSS_NAMES | {'MadeUpLoss'})
    cfg = dict(model=dict(
        heads=[dict(loss_cls=dict(type='mmdet.FocalLoss', gamma=1.0)),
               dict(loss_cls=dict(type='mmloss.GIoULoss'))],
        other=dict(loss=dict(type='MadeUpLoss'),
                   scoped=dict(type='mmcls.FocalLoss'),
                   cost=dict(type='FocalLossCost'),
                   unknown=dict(type='mmloss.NotALoss'))))
    new_cfg, rows = swap.swap_losses(cfg)
    assert [(r.path, r.old_type, r.new_type, r.status) for r in rows] == [
        ('model.heads[0].loss_cls', 'mmdet.FocalLoss', 'mmloss.FocalLoss',
         swap.SWAPPED),
        ('model.heads[1].loss_cls', 'mmloss.GIoULoss', 'mmloss.GIoULoss',
         swap.ALREADY_MMLOSS),
        ('model.other.loss', 'MadeUpLoss', 'MadeUpLoss', swap.NO_TWIN)]
    assert new_cfg['model']['heads'][0]['loss_cls'] == dict(
        type='mmloss.FocalLoss', gamma=1.0)
    assert cfg['model']['heads'][0]['loss_cls']['type'] == 'mmdet.FocalLoss'
    assert new_cfg['model']['other'] == cfg['model']['other']
    table = swap.format_table(rows)
    assert re.search(r"model\.other\.loss +MadeUpLoss +- +stays mmdet's: "
                     r'mmloss has no twin', table), table
    assert table.splitlines()[-1] == (
        "1 swapped, 1 already mmloss, 1 without an mmloss twin "
        "(stay mmdet's)")


@pytest.mark.parametrize('path', SHIPPED,
                         ids=[osp.relpath(p, ROOT) for p in SHIPPED])
def test_shipped_configs_end_with_only_mmloss_twins(path):
    """After the swap a shipped config names no mmdet loss that has a twin,
    and a second swap changes nothing."""
    pytest.importorskip('mmdet')
    new_cfg, rows = swap.swap_losses(swap.load_config(path))
    types = loss_types(new_cfg.to_dict())
    assert types, path
    for where, t in types.items():
        name = t.rpartition('.')[2]
        if name in mmloss.MODELS.module_dict:
            assert t == 'mmloss.' + name, where
    again, rows_again = swap.swap_losses(new_cfg)
    assert again.to_dict() == new_cfg.to_dict()
    assert all(r.status != swap.SWAPPED for r in rows_again)


def test_command_line_prints_and_writes(tmp_path, capsys):
    pytest.importorskip('mmdet')
    config = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
    assert main(['swap', config]) == 0
    printed = capsys.readouterr().out
    assert "type='mmloss.FocalLoss'" in printed
    assert '# model.bbox_head.loss_cls' in printed
    out = tmp_path / 'retina_mmloss.py'
    assert main(['swap', config, '-o', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'mmloss.FocalLoss' in printed and str(out) in printed
    written = swap.load_config(str(out))
    assert loss_types(written.to_dict()) == {
        'model.bbox_head.loss_cls': 'mmloss.FocalLoss',
        'model.bbox_head.loss_bbox': 'mmloss.L1Loss'}
