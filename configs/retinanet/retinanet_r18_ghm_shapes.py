# RetinaNet-R18 with GHM: mmloss.GHMC for classification and mmloss.GHMR for
# box regression (the settings of mmdet's ghm/retinanet_r50_fpn_ghm-1x_coco).
# GHM's gradient-density statistics are momentum buffers of the loss modules,
# saved in checkpoints and restored by --resume.
_base_ = './retinanet_r18_focal_shapes.py'
model = dict(
    bbox_head=dict(
        loss_cls=dict(
            _delete_=True,
            type='mmloss.GHMC',
            bins=30,
            momentum=0.75,
            use_sigmoid=True,
            loss_weight=1.0),
        loss_bbox=dict(
            _delete_=True,
            type='mmloss.GHMR',
            mu=0.02,
            bins=10,
            momentum=0.7,
            loss_weight=10.0)))
