# COCO: mmdet's Faster R-CNN R-50 1x with the bounded IoU box loss, now
# mmloss.BoundedIoULoss.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_bounded-iou_1x_coco.py'
model = dict(
    roi_head=dict(
        bbox_head=dict(
            reg_decoded_bbox=True,
            loss_bbox=dict(_delete_=True, type='mmloss.BoundedIoULoss',
                           loss_weight=10.0))))
