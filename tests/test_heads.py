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


# ---------------------------------------------------------------------------
# Heads that check their loss's class (mmloss.compat's twin classes)
# ---------------------------------------------------------------------------
def test_dynamic_roi_head_updates_our_smooth_l1_beta():
    """``DynamicRoIHead`` asserts ``isinstance(loss_bbox, SmoothL1Loss)``
    (mmdet's class) and sets ``loss_bbox.beta`` after every
    ``update_iter_interval`` calls: with ``mmloss.SmoothL1Loss`` it builds,
    and the new beta changes our loss exactly as it changes mmdet's."""
    from mmdet.models.losses import SmoothL1Loss as MMDetSmoothL1Loss
    from mmdet.structures import DetDataSample
    from mmengine.config import ConfigDict

    bbox_head = dict(
        type='Shared2FCBBoxHead', in_channels=8, fc_out_channels=16,
        roi_feat_size=7, num_classes=NUM_CLASSES,
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4,
                        target_stds=[0.1, 0.1, 0.2, 0.2]),
        reg_class_agnostic=False, loss_cls=copy.deepcopy(CE),
        loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0))
    cfg = dict(
        type='DynamicRoIHead',
        bbox_roi_extractor=dict(
            type='SingleRoIExtractor', out_channels=8, featmap_strides=[8],
            roi_layer=dict(type='RoIAlign', output_size=7,
                           sampling_ratio=0)),
        bbox_head=bbox_head,
        train_cfg=ConfigDict(
            assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.4,
                          neg_iou_thr=0.4, min_pos_iou=0.4,
                          match_low_quality=False, ignore_iof_thr=-1),
            sampler=dict(type='PseudoSampler'), pos_weight=-1, debug=False,
            dynamic_rcnn=dict(iou_topk=5, beta_topk=3,
                              update_iter_interval=1, initial_iou=0.4,
                              initial_beta=1.0)))
    ours_cfg = copy.deepcopy(cfg)
    ours_cfg['bbox_head']['loss_bbox']['type'] = 'mmloss.SmoothL1Loss'
    torch.manual_seed(0)
    ref = MODELS.build(cfg)
    ours = MODELS.build(ours_cfg)  # mmdet's assert passes
    ours.load_state_dict(ref.state_dict())
    loss_bbox = ours.bbox_head.loss_bbox
    assert isinstance(loss_bbox, mmloss.SmoothL1Loss)
    assert isinstance(loss_bbox, MMDetSmoothL1Loss)
    assert type(loss_bbox).__name__ == 'SmoothL1Loss'

    g = torch.Generator().manual_seed(3)
    feats = (torch.randn(1, 8, IMG // 8, IMG // 8, generator=g),)
    gt = torch.tensor([[4.0, 4.0, 30.0, 36.0], [20.0, 10.0, 60.0, 50.0]])

    def batch():
        proposals = gt.repeat(10, 1) + torch.randn(20, 4, generator=g) * 4
        sample = DetDataSample(metainfo=dict(img_shape=(IMG, IMG)))
        sample.gt_instances = InstanceData(
            bboxes=gt, labels=torch.tensor([0, 2]))
        return [InstanceData(bboxes=proposals)], [sample]

    betas = []
    for _ in range(2):
        proposals, samples = batch()
        results = [model.loss(feats, copy.deepcopy(proposals), samples)
                   for model in (ref, ours)]
        compare_losses(ref, ours, *results)
        assert ours.bbox_head.loss_bbox.beta == ref.bbox_head.loss_bbox.beta
        betas.append(float(ours.bbox_head.loss_bbox.beta))
    # the update happened, and reached our loss's arithmetic
    assert betas[0] != 1.0
    pred, target = torch.randn(6, 4) * 0.2, torch.zeros(6, 4)
    assert_close(loss_bbox(pred, target),
                 MMDetSmoothL1Loss(beta=betas[-1])(pred, target))
    assert not torch.allclose(loss_bbox(pred, target),
                              mmloss.SmoothL1Loss(beta=1.0)(pred, target))


QFL = dict(type='QualityFocalLoss', use_sigmoid=True, beta=2.0,
           loss_weight=1.0)
DETR_TRAIN = dict(assigner=dict(
    type='HungarianAssigner',
    match_costs=[dict(type='FocalLossCost', weight=2.0),
                 dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
                 dict(type='IoUCost', iou_mode='giou', weight=2.0)]))


def detr_pair(head_type, **extra):
    cfg = dict(type=head_type, num_classes=NUM_CLASSES, embed_dims=16,
               loss_cls=QFL, loss_bbox=dict(type='L1Loss', loss_weight=5.0),
               loss_iou=dict(type='GIoULoss', loss_weight=2.0),
               train_cfg=DETR_TRAIN, **extra)
    ref, ours = build_pair(cfg)
    from mmdet.models.losses import QualityFocalLoss as MMDetQFL
    assert isinstance(ours.loss_cls, MMDetQFL)
    return ref, ours


def detr_batch(seed, batch=2, queries=16):
    _, instances, metas = synthetic_batch(seed, batch=batch)
    g = torch.Generator().manual_seed(seed)
    cls_scores = torch.randn(batch, queries, NUM_CLASSES, generator=g)
    centres = torch.rand(batch, queries, 2, generator=g) * 0.6 + 0.2
    sizes = torch.rand(batch, queries, 2, generator=g) * 0.3 + 0.1
    return cls_scores, torch.cat([centres, sizes], -1), instances, metas


def test_detr_head_takes_the_quality_focal_branch_with_our_loss():
    """``DETRHead.loss_by_feat_single`` feeds ``(labels, iou scores)`` to a
    loss that ``isinstance(..., QualityFocalLoss)``: mmloss's twin gets the
    same branch and mmdet's values."""
    ref, ours = detr_pair('DETRHead')
    cls_scores, bbox_preds, instances, metas = detr_batch(seed=4)
    results = []
    for model in (ref, ours):
        scores = cls_scores.clone().requires_grad_()
        losses = model.loss_by_feat_single(scores, bbox_preds, instances,
                                           metas)
        results.append(dict(zip(('loss_cls', 'loss_bbox', 'loss_iou'),
                                losses)))
    for key in results[0]:
        assert_close(results[1][key].detach(), results[0][key].detach(),
                     what=key)


def test_dino_head_denoising_and_matching_losses_with_our_qfl():
    """DINO's denoising loss has its own quality-focal branch."""
    ref, ours = detr_pair('DINOHead', sync_cls_avg_factor=True)
    cls_scores, bbox_preds, instances, metas = detr_batch(seed=5)
    dn_meta = dict(num_denoising_queries=12, num_denoising_groups=2)
    results = []
    for model in (ref, ours):
        # 2 groups of 2 * (3 gts) denoising queries
        dn = model._loss_dn_single(cls_scores[:, :12], bbox_preds[:, :12],
                                   instances, metas, dn_meta)
        match = model.loss_by_feat_single(cls_scores, bbox_preds, instances,
                                          metas)
        results.append(dict(zip(('dn_cls', 'dn_bbox', 'dn_iou', 'loss_cls',
                                 'loss_bbox', 'loss_iou'), dn + match)))
    for key in results[0]:
        assert_close(results[1][key].detach(), results[0][key].detach(),
                     what=key)
