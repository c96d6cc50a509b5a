# The default config (`make demo`): RetinaNet-R18 with mmloss.FocalLoss on the
# bundled shapes dataset, trained from scratch on the CPU.
_base_ = [
    '../_base_/models/retinanet_r18_shapes.py',
    '../_base_/datasets/shapes_detection.py',
    '../_base_/schedules/shapes_cpu.py', '../_base_/default_runtime.py'
]
model = dict(
    bbox_head=dict(
        loss_cls=dict(
            type='mmloss.FocalLoss',
            use_sigmoid=True,
            gamma=2.0,
            alpha=0.25,
            loss_weight=1.0),
        loss_bbox=dict(type='mmloss.L1Loss', loss_weight=1.0)))
