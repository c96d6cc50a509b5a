# Your config, your data: MMDetection's zoo RetinaNet R-50 FPN 1x, unchanged
# but for mmloss's losses and a COCO-format dataset of your own. The worked
# example is the bundled shapes dataset; README.md, "Your config, your data",
# says what to change for yours. Runs offline: no pretrained download.
#
# Only the zoo config is a base. Do not add a dataset config of this repo (or
# any second file that also defines train_dataloader, ...) to the same
# _base_ list: MMEngine refuses with "KeyError: Duplicate key is not allowed
# among bases". Override the dataset keys below instead.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'

# ---- your data ----------------------------------------------------------
data_root = 'data/shapes/'  # holds annotations/*.json, train/ and val/
metainfo = dict(
    classes=('circle', 'square', 'triangle'),
    palette=[(220, 20, 60), (0, 128, 255), (0, 200, 0)])
num_classes = 3  # len(metainfo['classes'])
image_scale = (128, 128)  # the zoo's (1333, 800) for COCO-sized photos
# tools/train.py generates the bundled shapes dataset here on first use;
# delete this line for your own data.
shapes_dataset = dict(out_dir=data_root)

backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor'))
]
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/train.json',
        data_prefix=dict(img='train/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/val.json')
test_evaluator = val_evaluator

# ---- mmloss's losses ----------------------------------------------------
model = dict(
    backbone=dict(
        # The zoo starts from init_cfg=dict(type='Pretrained',
        # checkpoint='torchvision://resnet50'), which needs torchvision and a
        # download ("No module named 'torchvision'" without it). Here the
        # backbone trains from scratch, so nothing is frozen; README.md shows
        # how to start from a checkpoint file instead.
        init_cfg=None,
        frozen_stages=-1,
        norm_eval=False),
    bbox_head=dict(
        num_classes=num_classes,
        # An IoU-family loss compares boxes, so the head must decode its
        # deltas first. Without reg_decoded_bbox=True the loss gets deltas as
        # boxes and training runs on with a large negative loss_bbox.
        reg_decoded_bbox=True,
        loss_cls=dict(
            _delete_=True,
            type='mmloss.FocalLoss',
            use_sigmoid=True,
            gamma=2.0,
            alpha=0.25,
            loss_weight=1.0),
        loss_bbox=dict(_delete_=True, type='mmloss.GIoULoss',
                       loss_weight=2.0)))

# ---- schedule -----------------------------------------------------------
# The zoo's 1x schedule (SGD, 12 epochs, steps at 8 and 11); from scratch a
# gradient clip keeps the first iterations stable, and the warm-up is
# shortened to the 38 iterations per epoch of the shapes example.
optim_wrapper = dict(clip_grad=dict(max_norm=10, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=100),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True,
         milestones=[8, 11], gamma=0.1)
]
auto_scale_lr = dict(base_batch_size=8)
