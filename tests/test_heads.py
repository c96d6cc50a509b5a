"""MMDetection 3.3 heads trained with mmloss losses give mmdet's losses.

Each case builds one head twice from the same config, once with mmdet's
losses (``type='FocalLoss'``) and once with ours (``type='mmloss.FocalLoss'``,
exactly what a user writes), copies the weights across, runs ``loss_by_feat``
(or ``BBoxHead.loss``) on the same synthetic batch and compares every loss
component (rtol 1e-5) and the gradients w.r.t. every head parameter.

A case whose mmloss class is not (yet) available is skipped, naming it.
"""
import copy

import pytest
import torch

import mmloss
from tests.helpers import assert_close

mmdet_models = pytest.importorskip('mmdet.models')
from mmdet.registry import MODELS  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402

register_all_modules()

NUM_CLASSES = 4
IMG = 64
STRIDES = [8, 16]
MAX_IOU_TRAIN = dict(
    assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4,
                  min_pos_iou=0, ignore_iof_thr=-1),
    sampler=dict(type='PseudoSampler'), allowed_border=-1, pos_weight=-1,
    debug=False)
ATSS_TRAIN = dict(assigner=dict(type='ATSSAssigner', topk=9),
                  allowed_border=-1, pos_weight=-1, debug=False)


def retina(loss_cls, loss_bbox, **extra):
    return dict(
        type='RetinaHead', num_classes=NUM_CLASSES, in_channels=8,
        stacked_convs=1, feat_channels=8,
        anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                              scales_per_octave=2, ratios=[0.5, 1.0, 2.0],
                              strides=STRIDES),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4,
                        target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=loss_cls, loss_bbox=loss_bbox, train_cfg=MAX_IOU_TRAIN,
        **extra)


FOCAL = dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
             loss_weight=1.0)

DENSE_CASES = {
    'retina_focal_giou': retina(FOCAL, dict(type='GIoULoss', loss_weight=2.0),
                                reg_decoded_bbox=True),
    'retina_focal_smoothl1': retina(
        FOCAL, dict(type='SmoothL1Loss', beta=0.11, loss_weight=1.0)),
    'retina_focal_l1': retina(FOCAL, dict(type='L1Loss', loss_weight=1.0)),
    'retina_ghm': retina(
        dict(type='GHMC', bins=30, momentum=0.75, use_sigmoid=True,
             loss_weight=1.0),
        dict(type='GHMR', mu=0.02, bins=10, momentum=0.7, loss_weight=10.0)),
    'gfl': dict(
        type='GFLHead', num_classes=NUM_CLASSES, in_channels=8,
        stacked_convs=1, feat_channels=8, reg_max=8,
        norm_cfg=dict(type='GN', num_groups=4, requires_grad=True),
        anchor_generator=dict(type='AnchorGenerator', ratios=[1.0],
                              octave_base_scale=2, scales_per_octave=1,
                              strides=STRIDES),
        loss_cls=dict(type='QualityFocalLoss', use_sigmoid=True, beta=2.0,
                      loss_weight=1.0),
        loss_dfl=dict(type='DistributionFocalLoss', loss_weight=0.25),
        loss_bbox=dict(type='GIoULoss', loss_weight=2.0),
        train_cfg=ATSS_TRAIN),
    'vfnet': dict(
        type='VFNetHead', num_classes=NUM_CLASSES, in_channels=8,
        stacked_convs=1, feat_channels=8, strides=STRIDES,
        regress_ranges=((-1, 32), (32, 1e8)),
        norm_cfg=dict(type='GN', num_groups=4, requires_grad=True),
        center_sampling=False, dcn_on_last_conv=False, use_atss=True,
        anchor_generator=dict(type='AnchorGenerator', ratios=[1.0],
                              octave_base_scale=2, scales_per_octave=1,
                              center_offset=0.0, strides=STRIDES),
        use_vfl=True,
        loss_cls=dict(type='VarifocalLoss', use_sigmoid=True, alpha=0.75,
                      gamma=2.0, iou_weighted=True, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=1.5),
        loss_bbox_refine=dict(type='GIoULoss', loss_weight=2.0),
        train_cfg=ATSS_TRAIN),
}


def to_mmloss(cfg):
    """The same config with every ``loss_*`` switched to ``mmloss.<type>``."""
    cfg = copy.deepcopy(cfg)
    for key, value in cfg.items():
        if key.startswith('loss') and isinstance(value, dict):
            value['type'] = 'mmloss.' + value['type']
    return cfg


def missing_losses(cfg):
    return sorted({value['type'] for key, value in cfg.items()
                   if key.startswith('loss') and isinstance(value, dict)
                   and not hasattr(mmloss, value['type'])})


def build_pair(cfg):
    missing = missing_losses(cfg)
    if missing:
        pytest.skip(f'mmloss has no {", ".join(missing)} yet')
    torch.manual_seed(0)
    ref = MODELS.build(copy.deepcopy(cfg))
    ours = MODELS.build(to_mmloss(cfg))
    ours.load_state_dict(ref.state_dict())
    for key, value in cfg.items():
        if key.startswith('loss') and isinstance(value, dict):
            module = getattr(ours, key)
            assert type(module).__module__.startswith('mmloss'), key
            assert type(getattr(ref, key)).__module__.startswith('mmdet')
    return ref, ours


def synthetic_batch(seed, batch=2, gts=3):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(batch, 8, IMG // s, IMG // s, generator=g)
             for s in STRIDES]
    instances, metas = [], []
    for _ in range(batch):
        xy = torch.rand(gts, 2, generator=g) * (IMG * 0.6)
        wh = torch.rand(gts, 2, generator=g) * (IMG * 0.4) + 8
        instances.append(InstanceData(
            bboxes=torch.cat([xy, (xy + wh).clamp(max=IMG)], dim=1),
            labels=torch.randint(0, NUM_CLASSES, (gts,), generator=g)))
        metas.append(dict(img_shape=(IMG, IMG), pad_shape=(IMG, IMG),
                          batch_input_shape=(IMG, IMG), scale_factor=(1, 1)))
    return feats, instances, metas


def flat(losses):
    """``{'loss_cls': [level0, level1], ...}`` -> ``{'loss_cls.0': ...}``."""
    out = {}
    for key, value in losses.items():
        if isinstance(value, (list, tuple)):
            out.update({f'{key}.{i}': v for i, v in enumerate(value)})
        else:
            out[key] = value
    return out


def compare_losses(ref, ours, ref_losses, our_losses):
    ref_losses, our_losses = flat(ref_losses), flat(our_losses)
    assert our_losses.keys() == ref_losses.keys()
    for key in ref_losses:
        assert_close(our_losses[key].detach(), ref_losses[key].detach(),
                     what=key)
    names = [n for n, p in ref.named_parameters() if p.requires_grad]
    totals = [sum(v.sum() for k, v in losses.items() if 'loss' in k)
              for losses in (ref_losses, our_losses)]
    grads = [dict(zip(names, torch.autograd.grad(
        total, [dict(model.named_parameters())[n] for n in names],
        allow_unused=True)))
        for total, model in zip(totals, (ref, ours))]
    for name in names:
        a, b = grads[0][name], grads[1][name]
        if a is None:
            assert b is None or not b.any(), name
            continue
        # parameter gradients sum many per-anchor terms: float32 rounding of
        # the two summation orders is relative to the largest entry
        assert_close(b, a, rtol=1e-4, atol=1e-5 * float(a.abs().max()) +
                     1e-7, what=f'grad {name}')


@pytest.mark.parametrize('case', sorted(DENSE_CASES))
def test_dense_head(case):
    ref, ours = build_pair(DENSE_CASES[case])
    # two steps: GHM keeps a running gradient-density estimate
    for step in range(2 if case == 'retina_ghm' else 1):
        feats, instances, metas = synthetic_batch(seed=step)
        ref_losses = ref.loss_by_feat(*ref(feats), instances, metas)
        our_losses = ours.loss_by_feat(*ours(feats), instances, metas)
        compare_losses(ref, ours, ref_losses, our_losses)


CE = dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)
SMOOTH_L1 = dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0)
ROI_CASES = {
    'ce_smoothl1': dict(loss_cls=CE, loss_bbox=SMOOTH_L1),
    'bce_smoothl1': dict(loss_cls=dict(CE, use_sigmoid=True),
                         loss_bbox=SMOOTH_L1),
    'ce_balancedl1': dict(loss_cls=CE, loss_bbox=dict(
        type='BalancedL1Loss', alpha=0.5, gamma=1.5, beta=1.0,
        loss_weight=1.0)),
    'ce_l1': dict(loss_cls=CE, loss_bbox=dict(type='L1Loss')),
    'ce_giou_decoded': dict(loss_cls=CE, reg_decoded_bbox=True,
                            loss_bbox=dict(type='GIoULoss',
                                           loss_weight=10.0)),
    'ce_ignore_avg_non_ignore_giou': dict(
        loss_cls=dict(CE, ignore_index=NUM_CLASSES, avg_non_ignore=True,
                      class_weight=[1.0, 2.0, 0.5, 1.0, 0.3]),
        reg_decoded_bbox=True, loss_bbox=dict(type='GIoULoss')),
    'seesaw_giou_decoded': dict(
        loss_cls=dict(type='SeesawLoss', p=0.8, q=2.0,
                      num_classes=NUM_CLASSES, loss_weight=1.0),
        reg_decoded_bbox=True, loss_bbox=dict(type='GIoULoss')),
}


@pytest.mark.parametrize('case', sorted(ROI_CASES))
def test_shared2fc_bbox_head(case):
    """Faster R-CNN's box head: ``BBoxHead.loss`` on sampled RoIs."""
    cfg = dict(
        type='Shared2FCBBoxHead', in_channels=8, fc_out_channels=32,
        roi_feat_size=7, num_classes=NUM_CLASSES,
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4,
                        target_stds=[0.1, 0.1, 0.2, 0.2]),
        reg_class_agnostic=False, **copy.deepcopy(ROI_CASES[case]))
    ref, ours = build_pair(cfg)
    g = torch.Generator().manual_seed(1)
    num_rois = 64
    roi_feats = torch.randn(num_rois, 8, 7, 7, generator=g)
    xy = torch.rand(num_rois, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + 8 + torch.rand(num_rois, 2, generator=g) * 20],
                      dim=1)
    rois = torch.cat(
        [torch.randint(0, 2, (num_rois, 1), generator=g).float(), boxes], 1)
    labels = torch.where(torch.rand(num_rois, generator=g) < 0.3,
                         torch.randint(0, NUM_CLASSES, (num_rois,),
                                       generator=g), NUM_CLASSES)
    label_weights = torch.rand(num_rois, generator=g) + 0.5
    if cfg.get('reg_decoded_bbox'):
        bbox_targets = boxes + torch.randn(num_rois, 4, generator=g) * 2
    else:
        bbox_targets = torch.randn(num_rois, 4, generator=g)
    bbox_weights = (labels < NUM_CLASSES).float()[:, None].repeat(1, 4)
    # two steps: Seesaw's class counts carry over
    for _ in range(2):
        results = []
        for model in (ref, ours):
            cls_score, bbox_pred = model(roi_feats)
            results.append(model.loss(cls_score, bbox_pred, rois, labels,
                                      label_weights, bbox_targets,
                                      bbox_weights))
        compare_losses(ref, ours, *results)


def test_fcn_mask_head():
    """Mask R-CNN's mask head: ``CrossEntropyLoss(use_mask=True)``."""
    cfg = dict(type='FCNMaskHead', num_convs=1, in_channels=8,
               conv_out_channels=8, num_classes=NUM_CLASSES,
               loss_mask=dict(type='CrossEntropyLoss', use_mask=True,
                              loss_weight=1.0))
    ref, ours = build_pair(cfg)
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(6, 8, 7, 7, generator=g)
    targets = (torch.rand(6, 14, 14, generator=g) > 0.5).float()
    labels = torch.randint(0, NUM_CLASSES, (6,), generator=g)
    results = []
    for model in (ref, ours):
        mask_pred = model(feats)
        results.append(dict(loss_mask=model.loss_mask(mask_pred, targets,
                                                      labels)))
    compare_losses(ref, ours, *results)
