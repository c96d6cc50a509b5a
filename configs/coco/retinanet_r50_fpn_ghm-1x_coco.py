# COCO: mmdet's GHM RetinaNet R-50 1x with mmloss.GHMC and mmloss.GHMR in
# place of mmdet's GHM losses (same arguments, same results).
_base_ = 'mmdet::ghm/retinanet_r50_fpn_ghm-1x_coco.py'
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
