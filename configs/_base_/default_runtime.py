# Runtime shared by every mmloss config: mmdet's registry scope, hooks, logs.
default_scope = 'mmdet'

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=10),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='DetVisualizationHook'))

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # tools/train.py switches to gloo when there is no CUDA device.
    dist_cfg=dict(backend='nccl'))

vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(
    type='DetLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(type='LogProcessor', window_size=10, by_epoch=True)

log_level = 'INFO'
load_from = None
resume = False
# A fixed seed: the demo gives the same numbers on every run.
randomness = dict(seed=0)
# torch threads of a CPU-only run (tools/train.py, tools/test.py).
# 'auto' keeps OMP_NUM_THREADS / torch.set_num_threads when you set them,
# else takes the cores of this process's CPU affinity that are idle now
# (sampled from /proc/stat), split between the local processes
# (LOCAL_WORLD_SIZE). An int N uses N threads for the machine, split the same
# way. On a shared machine more threads than idle cores makes every
# iteration wait for descheduled threads (demo, 2 busy processes beside it:
# 2 threads 0.40 s/iter, 'auto' 1 thread 0.20 s/iter); see README "Threads
# and shared machines".
cpu_threads = 'auto'
