# GFL-R18 (Li et al., 2020) on the shapes dataset: mmloss.QualityFocalLoss
# learns a joint class-and-IoU score, mmloss.DistributionFocalLoss a discrete
# distribution over each box side, mmloss.GIoULoss the decoded box. GFLHead
# averages its avg_factor over ranks (reduce_mean) in distributed training.
_base_ = [
    '../_base_/models/retinanet_r18_shapes.py',
    '../_base_/datasets/shapes_detection.py',
    '../_base_/schedules/shapes_cpu.py', '../_base_/default_runtime.py'
]
# the RetinaNet base's preprocessor, backbone and neck; GFL's own head
model = dict(
    type='GFL',
    bbox_head=dict(
        _delete_=True,
        type='GFLHead',
        num_classes=3,
        in_channels=64,
        stacked_convs=2,
        feat_channels=64,
        norm_cfg=dict(type='GN', num_groups=16, requires_grad=True),
        anchor_generator=dict(
            type='AnchorGenerator',
            ratios=[1.0],
            octave_base_scale=4,
            scales_per_octave=1,
            strides=[8, 16, 32]),
        loss_cls=dict(
            type='mmloss.QualityFocalLoss',
            use_sigmoid=True,
            beta=2.0,
            loss_weight=1.0),
        loss_dfl=dict(type='mmloss.DistributionFocalLoss', loss_weight=0.25),
        reg_max=16,
        loss_bbox=dict(type='mmloss.GIoULoss', loss_weight=2.0)),
    train_cfg=dict(
        _delete_=True,
        assigner=dict(type='ATSSAssigner', topk=9),
        allowed_border=-1,
        pos_weight=-1,
        debug=False),
    test_cfg=dict(
        nms_pre=1000,
        min_bbox_size=0,
        score_thr=0.05,
        nms=dict(type='nms', iou_threshold=0.6),
        max_per_img=100))
