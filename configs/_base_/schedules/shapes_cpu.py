# A short CPU schedule for the shapes dataset (300 images, 38 iters/epoch).
# From-scratch backbones want a warm-up and gradient clipping: without them
# lr 0.02 diverged to NaN within a few epochs.
max_epochs = 24
train_cfg = dict(
    type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=200),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min_ratio=0.05,
         by_epoch=True, begin=0, end=max_epochs, convert_to_iter_based=True)
]

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
    clip_grad=dict(max_norm=10, norm_type=2))

# lr above is for one process with batch 8; --auto-scale-lr rescales it.
auto_scale_lr = dict(enable=False, base_batch_size=8)
