# RetinaNet-R18 with Wise-IoU v3 (Tong et al., 2023), an IoU-family loss that
# MMDetection lacks: a dynamic, non-monotonic focusing on the box outliers.
# Its running mean of (1 - IoU) is a buffer saved in checkpoints.
_base_ = './retinanet_r18_focal_shapes.py'
model = dict(
    bbox_head=dict(
        reg_decoded_bbox=True,
        loss_bbox=dict(
            _delete_=True,
            type='mmloss.WiseIoULoss',
            version='v3',
            alpha=1.9,
            delta=3.0,
            momentum=1e-2,
            loss_weight=2.0)))
