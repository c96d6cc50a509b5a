# COCO: mmdet's Faster R-CNN R-50 1x with the GIoU box loss, now
# mmloss.GIoULoss.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_giou_1x_coco.py'
model = dict(
    roi_head=dict(
        bbox_head=dict(
            reg_decoded_bbox=True,
            loss_bbox=dict(_delete_=True, type='mmloss.GIoULoss',
                           loss_weight=10.0))))
