# COCO: mmdet's GFL R-50 1x with mmloss.QualityFocalLoss,
# mmloss.DistributionFocalLoss and mmloss.GIoULoss.
_base_ = 'mmdet::gfl/gfl_r50_fpn_1x_coco.py'
model = dict(
    bbox_head=dict(
        loss_cls=dict(
            _delete_=True,
            type='mmloss.QualityFocalLoss',
            use_sigmoid=True,
            beta=2.0,
            loss_weight=1.0),
        loss_dfl=dict(_delete_=True, type='mmloss.DistributionFocalLoss',
                      loss_weight=0.25),
        loss_bbox=dict(_delete_=True, type='mmloss.GIoULoss',
                       loss_weight=2.0)))
