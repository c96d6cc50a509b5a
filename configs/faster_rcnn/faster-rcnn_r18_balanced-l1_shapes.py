# Faster R-CNN-R18 whose RoI head regresses with mmloss.BalancedL1Loss
# (Libra R-CNN, Pang et al., 2019; mmdet's settings alpha=0.5, gamma=1.5).
_base_ = [
    '../_base_/models/faster-rcnn_r18_shapes.py',
    '../_base_/datasets/shapes_detection.py',
    '../_base_/schedules/shapes_cpu.py', '../_base_/default_runtime.py'
]
model = dict(
    roi_head=dict(
        bbox_head=dict(
            loss_bbox=dict(
                _delete_=True,
                type='mmloss.BalancedL1Loss',
                alpha=0.5,
                gamma=1.5,
                beta=1.0,
                loss_weight=1.0))))
