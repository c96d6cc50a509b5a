# COCO: mmdet's Libra Faster R-CNN R-50 1x (balanced FPN, IoU-balanced
# sampling) with mmloss.BalancedL1Loss as the RoI box loss.
_base_ = 'mmdet::libra_rcnn/libra-faster-rcnn_r50_fpn_1x_coco.py'
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
