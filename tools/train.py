"""Train an MMDetection detector whose losses come from mmloss.

The command line is MMDetection's ``tools/train.py``::

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--auto-scale-lr]
        [--resume [CKPT]] [--cfg-options KEY=VALUE ...]
        [--launcher {none,pytorch,slurm,mpi}]

What it adds for a CPU-only machine and the bundled dataset:

* the shapes dataset (``tools/make_shapes_dataset.py``) is generated on first
  use when the config names it (top-level ``shapes_dataset = dict(out_dir=...)``);
* without CUDA, distributed runs use the gloo backend and a CPU
  ``MMDistributedDataParallel`` (``tools/dist_train.sh CONFIG 2`` trains on
  two processes of this machine); mmdet heads that average ``avg_factor``
  across ranks (``reduce_mean``) then do so over gloo;
* ``cpu_threads`` (top-level config key) sets torch's thread count, shared
  out between the processes of this machine;
* the run ends by evaluating on the val split and printing
  ``box mAP (val): 0.xxx``.

Losses are picked by name in the config (``type='mmloss.FocalLoss'``) or
swapped from the command line, e.g.
``--cfg-options model.bbox_head.loss_bbox.type=mmloss.SmoothL1Loss``.
"""
import argparse
import os
import os.path as osp
import subprocess
import sys

import torch
from mmengine.config import Config, DictAction
from mmengine.hooks import Hook
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from make_shapes_dataset import ensure_shapes_dataset  # noqa: E402

BOX_MAP_KEY = 'coco/bbox_mAP'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Train a detector with mmloss losses')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--amp', action='store_true',
        help='enable automatic-mixed-precision training (needs CUDA)')
    parser.add_argument(
        '--auto-scale-lr', action='store_true',
        help='scale the learning rate by total batch size / base_batch_size')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from this checkpoint; without a path, resume from the '
        'latest checkpoint in the work dir')
    return parse_with_common_arguments(parser, argv)


def parse_with_common_arguments(parser, argv=None):
    """Add the options train.py and test.py share, parse, set LOCAL_RANK."""
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings of the config, key=value pairs such as '
        'model.bbox_head.loss_cls.type=mmloss.GHMC')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def load_config(args):
    """``args.config`` with the launcher, --cfg-options and work dir set."""
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    return cfg


def build_config(args):
    """The config of ``args.config`` with every command-line option applied."""
    cfg = load_config(args)

    if args.amp:
        if not torch.cuda.is_available():
            raise SystemExit('--amp needs a CUDA device: mmengine\'s '
                             'AmpOptimWrapper does not run on the CPU')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'

    if args.auto_scale_lr:
        scale = cfg.get('auto_scale_lr', None)
        if not scale or 'base_batch_size' not in scale:
            raise SystemExit('--auto-scale-lr: the config has no '
                             'auto_scale_lr = dict(base_batch_size=...)')
        cfg.auto_scale_lr.enable = True

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    if args.launcher != 'none' and not torch.cuda.is_available():
        use_cpu_distributed(cfg)
    return cfg


def use_cpu_distributed(cfg):
    """Make a distributed config run on CPU processes over gloo."""
    cfg.setdefault('env_cfg', {})
    cfg.env_cfg.dist_cfg = dict(backend='gloo')
    if cfg.get('model_wrapper_cfg', None) is None:
        # mmengine's default wrapper pins device_ids=[LOCAL_RANK], a GPU.
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel',
            device_ids=None,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    if cfg.get('sync_bn', None) is not None:
        cfg.sync_bn = 'torch'  # mmcv's SyncBN is CUDA-only


def init_cpu_process_group(launcher):
    """Start the gloo process group for ``launcher`` on a CPU-only machine.

    mmengine's ``init_dist`` calls ``torch.cuda.set_device``, which a CPU
    build of torch rejects; the Runner skips its own initialisation when a
    process group already exists, so we create it here.
    """
    import torch.distributed as dist
    if dist.is_initialized():
        return
    env = os.environ
    if launcher == 'mpi':
        env.setdefault('RANK', env['OMPI_COMM_WORLD_RANK'])
        env.setdefault('WORLD_SIZE', env['OMPI_COMM_WORLD_SIZE'])
        env.setdefault('LOCAL_RANK', env['OMPI_COMM_WORLD_LOCAL_RANK'])
    elif launcher == 'slurm':
        env.setdefault('RANK', env['SLURM_PROCID'])
        env.setdefault('WORLD_SIZE', env['SLURM_NTASKS'])
        env.setdefault('LOCAL_RANK', env['SLURM_LOCALID'])
        if 'MASTER_ADDR' not in env:
            nodes = subprocess.getoutput(
                f'scontrol show hostname {env["SLURM_NODELIST"]} | head -n1')
            env['MASTER_ADDR'] = nodes.strip()
    env.setdefault('MASTER_ADDR', '127.0.0.1')
    env.setdefault('MASTER_PORT', '29500')
    dist.init_process_group(backend='gloo')


def trust_own_checkpoints(cfg):
    """Let mmengine load the checkpoint given by --resume / load_from.

    mmengine 0.10 calls ``torch.load`` without ``weights_only``; since torch
    2.6 that means weights-only unpickling, which refuses what mmengine saves
    beside the weights (its ``HistoryBuffer`` logs, numpy arrays and dtypes)
    so every resume fails. Checkpoints named on the command line are the
    user's own (usually from their work dir), so restore torch's earlier
    full unpickling for them, exactly as mmengine does under torch < 2.6.
    """
    if cfg.get('resume', False) or cfg.get('load_from', None):
        os.environ.setdefault('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')


def set_cpu_threads(cfg):
    """Apply the config's ``cpu_threads``, split between local processes."""
    threads = cfg.get('cpu_threads', None)
    if threads is None or torch.cuda.is_available():
        return
    local_procs = int(os.environ.get('LOCAL_WORLD_SIZE', 1))
    torch.set_num_threads(max(1, int(threads) // local_procs))


def prepare_data(cfg):
    """Generate the bundled shapes dataset if the config uses it."""
    shapes = cfg.get('shapes_dataset', None)
    if shapes is not None:
        ensure_shapes_dataset(shapes['out_dir'])


class LastValMetricsHook(Hook):
    """Remembers the metrics of the latest validation run."""

    priority = 'LOWEST'

    def __init__(self):
        self.metrics = None
        self.epoch = None
        self.iter = None

    def after_val_epoch(self, runner, metrics=None):
        self.metrics = dict(metrics or {})
        self.epoch, self.iter = runner.epoch, runner.iter


def build_runner(cfg):
    if 'runner_type' not in cfg:
        return Runner.from_cfg(cfg)
    return RUNNERS.build(cfg)


def final_val_metrics(runner, recorder):
    """Metrics on the val split of the final weights (runs val if needed)."""
    if runner.val_loop is None:
        return None
    if (recorder.metrics is None or recorder.epoch != runner.epoch
            or recorder.iter != runner.iter):
        runner.val_loop.run()
    return recorder.metrics


def main(argv=None):
    """Train; returns ``(runner, final val metrics or None)``."""
    args = parse_args(argv)
    cfg = build_config(args)
    set_cpu_threads(cfg)
    trust_own_checkpoints(cfg)
    prepare_data(cfg)
    if args.launcher != 'none' and not torch.cuda.is_available():
        init_cpu_process_group(args.launcher)

    runner = build_runner(cfg)
    recorder = LastValMetricsHook()
    runner.register_hook(recorder, priority='LOWEST')
    runner.train()
    metrics = final_val_metrics(runner, recorder)
    if metrics is not None and runner.rank == 0:
        if BOX_MAP_KEY in metrics:
            print(f'box mAP_50 (val): '
                  f'{metrics.get("coco/bbox_mAP_50", 0):.3f}')
            print(f'box mAP (val): {metrics[BOX_MAP_KEY]:.3f}', flush=True)
        elif not metrics:
            # CocoMetric returns nothing when no box passed score_thr.
            print('box mAP (val): 0.000 (no detections)', flush=True)
    return runner, metrics


if __name__ == '__main__':
    main()
