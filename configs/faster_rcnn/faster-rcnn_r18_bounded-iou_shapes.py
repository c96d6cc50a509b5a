# Faster R-CNN-R18 whose RoI head regresses decoded boxes with
# mmloss.BoundedIoULoss (Tychsen-Smith & Petersson, 2018), as in mmdet's
# faster-rcnn_r50_fpn_bounded-iou_1x_coco.
_base_ = [
    '../_base_/models/faster-rcnn_r18_shapes.py',
    '../_base_/datasets/shapes_detection.py',
    '../_base_/schedules/shapes_cpu.py', '../_base_/default_runtime.py'
]
model = dict(
    roi_head=dict(
        bbox_head=dict(
            reg_decoded_bbox=True,
            loss_bbox=dict(_delete_=True, type='mmloss.BoundedIoULoss',
                           loss_weight=10.0))))
