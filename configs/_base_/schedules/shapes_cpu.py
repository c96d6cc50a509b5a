# A short CPU schedule for the shapes dataset (300 images, 38 iters/epoch at
# batch 8): AdamW with a linear warm-up, cosine decay and gradient clipping.
# The backbones train from scratch; SGD (lr 0.02, momentum 0.9, clipping)
# reached only box mAP 0.41 in 24 epochs of the default config, AdamW 0.86 in
# 36 epochs.
max_epochs = 30
train_cfg = dict(
    type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=100),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min_ratio=0.01,
         by_epoch=True, begin=0, end=max_epochs, convert_to_iter_based=True)
]

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.002, weight_decay=0.05),
    clip_grad=dict(max_norm=10, norm_type=2))

# lr above is for one process with batch 8; --auto-scale-lr rescales it.
auto_scale_lr = dict(enable=False, base_batch_size=8)
