"""Evaluate a checkpoint of an mmloss config (MMDetection's command line).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out PKL]
        [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

Prints ``box mAP (<split>): 0.xxx`` at the end. Like tools/train.py it
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
from train import (BOX_MAP_KEY, init_cpu_process_group,  # noqa: E402
                   load_config, parse_with_common_arguments, prepare_data,
                   set_cpu_threads, trust_own_checkpoints,
                   use_cpu_distributed)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Evaluate a detector trained with mmloss losses')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the metrics')
    parser.add_argument(
        '--out', help='dump the predictions to a pickle file (.pkl)')
    return parse_with_common_arguments(parser, argv)


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
    if args.launcher != 'none' and not torch.cuda.is_available():
        use_cpu_distributed(cfg)
    return cfg


def main(argv=None):
    """Evaluate; returns the test metrics."""
    args = parse_args(argv)
    cfg = build_config(args)
    set_cpu_threads(cfg)
    trust_own_checkpoints(cfg)
    prepare_data(cfg)
    if args.launcher != 'none' and not torch.cuda.is_available():
        init_cpu_process_group(args.launcher)
    runner = (Runner.from_cfg(cfg) if 'runner_type' not in cfg else
              RUNNERS.build(cfg))
    metrics = runner.test()
    if runner.rank == 0 and metrics and BOX_MAP_KEY in metrics:
        print(f'box mAP (test): {metrics[BOX_MAP_KEY]:.3f}', flush=True)
    return metrics


if __name__ == '__main__':
    main()
