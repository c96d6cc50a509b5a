"""Evaluate a checkpoint of an mmloss config (MMDetection's command line).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out PKL]
        [--show-dir DIR] [--trust-checkpoint]
        [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

* ``--out PKL`` dumps the predictions to a pickle (mmdet's
  ``DumpDetResults``: one dict per image with ``pred_instances``);
* ``--show-dir DIR`` draws every test image with its predicted boxes through
  mmdet's ``DetVisualizationHook`` and writes the images to ``DIR``;
* the checkpoint is loaded weights-only (``tools/safe_checkpoints.py``);
  ``--trust-checkpoint`` unpickles it fully, for files you trust.

Prints ``box mAP (test): 0.xxx`` at the end. Like tools/train.py it
generates the bundled shapes dataset when missing and runs distributed jobs
over gloo on a CPU-only machine (``tools/dist_test.sh``).
"""
import argparse
import os.path as osp
import sys

import torch
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from safe_checkpoints import checkpoint_loading  # noqa: E402
from train import (BOX_MAP_KEY, init_cpu_process_group,  # noqa: E402
                   load_config, parse_with_common_arguments, prepare_data,
                   print_header, refusal_as_exit, set_cpu_threads,
                   use_cpu_distributed)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Evaluate a detector trained with mmloss losses')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the metrics')
    parser.add_argument(
        '--out', help='dump the predictions to a pickle file (.pkl)')
    parser.add_argument(
        '--show-dir', help='draw the predictions on the test images and '
        'save them in this folder')
    return parse_with_common_arguments(parser, argv)


def check_checkpoint(path):
    """Exit with a clear message when a local checkpoint file is missing."""
    if '://' in path:
        return  # a URL or a model-zoo name: mmengine resolves it
    if not osp.exists(path):
        raise SystemExit(f'tools/test.py: checkpoint {path} does not exist')
    if not osp.isfile(path):
        raise SystemExit(f'tools/test.py: checkpoint {path} is not a file')


def draw_predictions(cfg, show_dir):
    """Make the config's DetVisualizationHook draw into ``show_dir``."""
    hooks = cfg.get('default_hooks', None) or {}
    if 'visualization' not in hooks:
        raise SystemExit(
            '--show-dir needs default_hooks.visualization = '
            "dict(type='DetVisualizationHook') in the config")
    hooks['visualization']['draw'] = True
    # The hook joins a relative folder onto <work_dir>/<timestamp>.
    hooks['visualization']['test_out_dir'] = osp.abspath(show_dir)


def build_config(args):
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    cfg.resume = False
    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise SystemExit('--out must be a .pkl or .pickle file')
        cfg.test_evaluator = [cfg.test_evaluator] if isinstance(
            cfg.test_evaluator, dict) else list(cfg.test_evaluator)
        cfg.test_evaluator.append(
            dict(type='DumpDetResults', out_file_path=args.out))
    if args.show_dir is not None:
        draw_predictions(cfg, args.show_dir)
    if args.launcher != 'none' and not torch.cuda.is_available():
        use_cpu_distributed(cfg)
    return cfg


def main(argv=None):
    """Evaluate; returns the test metrics."""
    args = parse_args(argv)
    check_checkpoint(args.checkpoint)
    cfg = build_config(args)
    threads = set_cpu_threads(cfg)
    prepare_data(cfg)
    print_header(cfg, args.config, threads, 'test')
    if args.launcher != 'none' and not torch.cuda.is_available():
        init_cpu_process_group(args.launcher)
    runner = (Runner.from_cfg(cfg) if 'runner_type' not in cfg else
              RUNNERS.build(cfg))
    with refusal_as_exit(), checkpoint_loading(args.trust_checkpoint):
        metrics = runner.test()
    if runner.rank == 0 and metrics and BOX_MAP_KEY in metrics:
        print(f'box mAP (test): {metrics[BOX_MAP_KEY]:.3f}', flush=True)
    return metrics


if __name__ == '__main__':
    main()
