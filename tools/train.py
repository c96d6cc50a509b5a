"""Train an MMDetection detector whose losses come from mmloss.

The command line is MMDetection's ``tools/train.py``::

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--auto-scale-lr]
        [--resume [CKPT]] [--cfg-options KEY=VALUE ...]
        [--launcher {none,pytorch,slurm,mpi}] [--swap-losses]

What it adds for a CPU-only machine and the bundled dataset:

* the shapes dataset (``tools/make_shapes_dataset.py``) is generated on first
  use when the config names it (top-level
  ``shapes_dataset = dict(out_dir=...)``), with progress;
* without CUDA, distributed runs use the gloo backend and a CPU
  ``MMDistributedDataParallel`` (``tools/dist_train.sh CONFIG 2`` trains on
  two processes of this machine); mmdet heads that average ``avg_factor``
  across ranks (``reduce_mean``) then do so over gloo;
* ``cpu_threads`` (top-level config key): an int sets torch's thread count,
  shared out between the processes of this machine; ``'auto'`` (the
  default) takes the idle cores, see ``tools/cpu_threads.py``;
* checkpoints (``--resume``, ``load_from``, pretrained ``init_cfg``) are
  loaded weights-only, allowing just what mmengine stores beside the weights
  (``tools/safe_checkpoints.py``); ``--trust-checkpoint`` unpickles them
  fully, for files you trust;
* a short header (config, losses and where they come from, dataset size,
  threads) is printed before mmengine's own output;
* the run ends by evaluating on the val split and printing
  ``box mAP (val): 0.xxx``.

Losses are picked by name in the config (``type='mmloss.FocalLoss'``) or
swapped from the command line: all at once with ``--swap-losses`` (every
loss with an mmloss twin, as ``python -m mmloss swap`` does; the table of
what was swapped is printed first; CONFIG may then be an MMDetection
package config such as ``mmdet::retinanet/retinanet_r50_fpn_1x_coco.py``),
or one by one, e.g.
``--cfg-options model.bbox_head.loss_bbox.type=mmloss.SmoothL1Loss``.
"""
import argparse
import contextlib
import json
import os
import os.path as osp
import subprocess
import sys

import torch
from mmengine.config import DictAction
from mmengine.hooks import Hook
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmloss import swap

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from cpu_threads import choose_cpu_threads  # noqa: E402
from make_shapes_dataset import ensure_shapes_dataset  # noqa: E402
from safe_checkpoints import (TRUST_FLAG,  # noqa: E402
                              UntrustedCheckpointError, checkpoint_loading)

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
    parser.add_argument(
        '--swap-losses', action='store_true',
        help='use the mmloss twin of every loss the config names (as '
        '`python -m mmloss swap`), before --cfg-options; the table of what '
        'was swapped is printed at start')
    parser.add_argument(
        TRUST_FLAG, action='store_true',
        help='fully unpickle checkpoints (resume, load_from, pretrained '
        'weights) instead of weights-only loading; a crafted checkpoint can '
        'then run any code, so use it only for files you trust')
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def load_config(args):
    """``args.config`` (a file, or an ``mmdet::`` package config) with
    --swap-losses, the launcher, --cfg-options and the work dir applied."""
    cfg = swap.load_config(args.config)
    if getattr(args, 'swap_losses', False):
        cfg, rows = swap.swap_losses(cfg)
        if is_main_process():
            print('--swap-losses:\n' + swap.format_table(rows), flush=True)
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


def set_cpu_threads(cfg):
    """Apply the config's ``cpu_threads`` (int or ``'auto'``) on a CPU run.

    Returns:
        ``(threads, reason)``, or ``(None, reason)`` when torch is left as
        it is (CUDA runs).
    """
    if torch.cuda.is_available():
        return None, 'CUDA run: torch default'
    try:
        threads, reason = choose_cpu_threads(cfg.get('cpu_threads', 'auto'))
    except ValueError as exc:
        raise SystemExit(f'{cfg.filename}: {exc}') from None
    torch.set_num_threads(threads)
    return threads, reason


def is_main_process():
    """Rank 0 of the job (read from the launcher's environment)."""
    return int(os.environ.get('RANK', 0)) == 0


def loss_types(node, path=''):
    """``[(dotted path, type)]`` of every ``loss_*`` config under ``node``."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            sub = f'{path}.{key}' if path else key
            if key.startswith('loss') and isinstance(value, dict) \
                    and 'type' in value:
                found.append((sub, value['type']))
            else:
                found.extend(loss_types(value, sub))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            found.extend(loss_types(value, f'{path}[{i}]'))
    return found


def loss_origin(type_name, default_scope):
    """``(class name, package)``: ``mmloss.X`` is mmloss, ``X`` the scope's."""
    if not isinstance(type_name, str):
        return getattr(type_name, '__name__', str(type_name)), \
            type_name.__module__.split('.')[0]
    if '.' in type_name:
        scope, name = type_name.split('.', 1)
        return name, scope
    return type_name, default_scope or 'mmdet'


# Annotation files above this size are not read just to count images.
MAX_COUNTED_ANN_BYTES = 64 * 2**20


def dataset_size(dataset_cfg):
    """A description of the images a dataset config yields (no build)."""
    if not dataset_cfg:
        return 'none'
    times = 1
    while 'dataset' in dataset_cfg and 'ann_file' not in dataset_cfg:
        times *= dataset_cfg.get('times', 1)
        dataset_cfg = dataset_cfg['dataset']
    ann_file = dataset_cfg.get('ann_file', '')
    root = dataset_cfg.get('data_root', '') or ''
    if ann_file and not osp.isabs(ann_file):
        ann_file = osp.join(root, ann_file)
    indices = dataset_cfg.get('indices', None)
    count = None
    if isinstance(indices, int):
        count = indices
    elif indices is not None:
        count = len(indices)
    elif osp.isfile(ann_file) and \
            osp.getsize(ann_file) <= MAX_COUNTED_ANN_BYTES:
        with open(ann_file) as f:
            count = len(json.load(f).get('images', []))
    what = f'{count} images' if count is not None else 'size unknown'
    if times > 1:
        what += f' x {times} repeats'
    return f'{what} ({ann_file or dataset_cfg.get("type", "?")})'


def print_header(cfg, config_path, threads, split='train', stream=None):
    """Config, losses and their package, dataset size, threads (rank 0)."""
    if not is_main_process():
        return
    scope = cfg.get('default_scope', 'mmdet')
    losses = [f'{path} = {name} ({origin})' for path, (name, origin) in (
        (p, loss_origin(t, scope)) for p, t in loss_types(cfg.get('model')))]
    loader = cfg.get(f'{split}_dataloader', None) or {}
    thread_text = (f'{threads[0]} ({threads[1]})' if threads[0] is not None
                   else threads[1])
    lines = [f'mmloss {split}: {config_path}',
             f'  work dir: {cfg.work_dir}',
             '  losses:   ' + ('\n            '.join(losses) or 'none'),
             f'  dataset:  {split} split, '
             f'{dataset_size(loader.get("dataset"))}',
             f'  threads:  {thread_text}']
    print('\n'.join(lines), file=stream or sys.stdout, flush=True)


def prepare_data(cfg):
    """Generate the bundled shapes dataset if the config uses it."""
    shapes = cfg.get('shapes_dataset', None)
    if shapes is not None:
        ensure_shapes_dataset(shapes['out_dir'], progress=is_main_process())


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


@contextlib.contextmanager
def refusal_as_exit():
    """A refused checkpoint ends the tool with its message (exit code 1)."""
    try:
        yield
    except UntrustedCheckpointError as exc:
        raise SystemExit(f'error: {exc}') from None


def main(argv=None):
    """Train; returns ``(runner, final val metrics or None)``."""
    args = parse_args(argv)
    cfg = build_config(args)
    threads = set_cpu_threads(cfg)
    prepare_data(cfg)
    print_header(cfg, args.config, threads, 'train')
    if args.launcher != 'none' and not torch.cuda.is_available():
        init_cpu_process_group(args.launcher)

    runner = build_runner(cfg)
    recorder = LastValMetricsHook()
    runner.register_hook(recorder, priority='LOWEST')
    with refusal_as_exit(), checkpoint_loading(args.trust_checkpoint):
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
