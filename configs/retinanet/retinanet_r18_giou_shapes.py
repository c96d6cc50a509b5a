# RetinaNet-R18 regressing decoded boxes with mmloss.GIoULoss instead of L1
# on the deltas (reg_decoded_bbox=True makes the head decode before the loss).
_base_ = './retinanet_r18_focal_shapes.py'
model = dict(
    bbox_head=dict(
        reg_decoded_bbox=True,
        loss_bbox=dict(_delete_=True, type='mmloss.GIoULoss',
                       loss_weight=2.0)))
