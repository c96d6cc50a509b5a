# COCO: mmdet's RetinaNet R-50 1x, unchanged but for mmloss.FocalLoss and
# mmloss.L1Loss. Needs data/coco/ laid out as MMDetection expects.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
model = dict(
    bbox_head=dict(
        loss_cls=dict(
            _delete_=True,
            type='mmloss.FocalLoss',
            use_sigmoid=True,
            gamma=2.0,
            alpha=0.25,
            loss_weight=1.0),
        loss_bbox=dict(_delete_=True, type='mmloss.L1Loss',
                       loss_weight=1.0)))
