"""Compare training runs: loss components and box mAP against iteration.

Reads MMEngine's scalar logs of several runs and draws one figure per metric
(every run a line), plus a Markdown table of the final figures::

    python tools/compare_runs.py work_dirs/focal work_dirs/ghm work_dirs/giou \\
        --out-dir work_dirs/compare --combined docs/figures/compare.png

Each ``WORK_DIR`` may be a work dir (its latest ``<timestamp>`` folder with a
log is used), a ``<timestamp>`` folder, or a log file. In a ``<timestamp>``
folder the log is the first of ``vis_data/scalars.json``,
``vis_data/<timestamp>.json`` and ``<timestamp>.json``: JSON lines written by
MMEngine's ``LoggerHook`` + ``LocalVisBackend``. Training lines carry
``loss*``, ``iter`` (and ``epoch`` in epoch-based training); validation lines
carry metrics such as ``coco/bbox_mAP`` with ``step`` = the epoch (epoch-based
training, mapped to the last iteration of that epoch) or the iteration.

MMEngine logs every ``interval`` iterations of an epoch, so an epoch's last
iterations are often not logged (an epoch of 57 iterations logged every 10
ends at iteration 57, its last line is at 50). The epoch length is read from
the text log beside the scalars (``Epoch(train) [e][i/N]``) or, without it,
from the distance between the first lines of consecutive epochs; each
epoch's metrics are placed at its true last iteration, and the iteration
count of a run is that of its last completed epoch.

Outputs in ``--out-dir``: ``<metric>.png`` per metric (``/`` becomes ``_``)
and ``summary.md``; the table is also printed.
"""
import argparse
import json
import math
import os
import re
import os.path as osp
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

DEFAULT_EVAL_METRIC = 'coco/bbox_mAP'
# Keys of a log line that are bookkeeping, not metrics.
BOOKKEEPING = {'step', 'iter', 'epoch', 'time', 'data_time', 'memory'}
HIERARCHY_PREFIXES = ('train/', 'val/', 'test/')


class CompareRunsError(ValueError):
    """A problem with the inputs, reported as one clear line."""


@dataclass
class Series:
    """One metric of one run: iterations and values, in log order."""
    iters: List[float] = field(default_factory=list)
    values: List[float] = field(default_factory=list)

    def add(self, x, y):
        self.iters.append(x)
        self.values.append(y)


@dataclass
class Run:
    """The scalars of one run."""
    label: str
    log_path: str
    train: Dict[str, Series] = field(default_factory=dict)
    val: Dict[str, Series] = field(default_factory=dict)
    last_iter: Optional[float] = None
    iters_per_epoch: Optional[int] = None

    def series(self, metric: str) -> Optional[Series]:
        return self.train.get(metric) or self.val.get(metric)

    @property
    def metrics(self):
        return set(self.train) | set(self.val)


def _timestamp_log(folder: str) -> Optional[str]:
    name = osp.basename(osp.normpath(folder))
    for candidate in (osp.join(folder, 'vis_data', 'scalars.json'),
                      osp.join(folder, 'vis_data', f'{name}.json'),
                      osp.join(folder, f'{name}.json')):
        if osp.isfile(candidate) and os.path.getsize(candidate) > 0:
            return candidate
    return None


def find_scalar_log(path: str) -> str:
    """The scalar log of a work dir, a ``<timestamp>`` folder or a file.

    In a work dir the latest ``<timestamp>`` folder (by name, which MMEngine
    writes as ``YYYYmmdd_HHMMSS``) holding a non-empty log wins.

    Raises:
        CompareRunsError: ``path`` does not exist or holds no log.
    """
    if not osp.exists(path):
        raise CompareRunsError(f'compare_runs: {path} does not exist')
    if osp.isfile(path):
        return path
    own = _timestamp_log(path)
    if own:
        return own
    for sub in sorted(os.listdir(path), reverse=True):
        folder = osp.join(path, sub)
        if osp.isdir(folder):
            log = _timestamp_log(folder)
            if log:
                return log
    raise CompareRunsError(
        f'compare_runs: no MMEngine scalar log under {path} (looked for '
        '<timestamp>/vis_data/scalars.json, '
        '<timestamp>/vis_data/<timestamp>.json and '
        '<timestamp>/<timestamp>.json); is it a work dir of a run that '
        'logged at least one iteration?')


def _strip_prefix(key: str) -> str:
    for prefix in HIERARCHY_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_run(path: str, label: Optional[str] = None) -> Run:
    """Parse the scalar log of one run (see :func:`find_scalar_log`)."""
    log_path = find_scalar_log(path)
    rows = []
    with open(log_path, encoding='utf-8') as f:
        lines = f.read().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                continue  # a run still writing its last line
            raise CompareRunsError(
                f'compare_runs: {log_path}:{number} is not a JSON line '
                f'({exc.msg})') from None
        if isinstance(row, dict):
            rows.append({_strip_prefix(k): v for k, v in row.items()})
    if not rows:
        raise CompareRunsError(f'compare_runs: {log_path} holds no scalars')

    if label is None:
        label = _default_label(path, log_path)
    run = Run(label=label, log_path=log_path)
    train_rows = [r for r in rows if _is_train_row(r)]
    val_rows = [r for r in rows if not _is_train_row(r)]

    epoch_iters: Dict[int, List[float]] = {}
    for row in train_rows:
        x = row.get('iter', row.get('step'))
        if not _is_number(x):
            continue
        run.last_iter = x if run.last_iter is None else max(run.last_iter, x)
        if _is_number(row.get('epoch')):
            epoch_iters.setdefault(row['epoch'], []).append(x)
        for key, value in row.items():
            if key not in BOOKKEEPING and _is_number(value):
                run.train.setdefault(key, Series()).add(x, value)

    epoch_end = {e: max(xs) for e, xs in epoch_iters.items()}
    if epoch_iters:
        text = _read_text_log(log_path)
        run.iters_per_epoch = (_iters_per_epoch_from_text(text)
                               or _iters_per_epoch_from_scalars(epoch_iters))
        if run.iters_per_epoch:
            done = _completed_epochs(epoch_iters, val_rows, text)
            epoch_end = {e: e * run.iters_per_epoch
                         for e in set(epoch_iters) | done}
            if done:
                run.last_iter = max(run.last_iter,
                                    max(done) * run.iters_per_epoch)

    for row in val_rows:
        step = row.get('step')
        if not _is_number(step):
            continue
        x = _val_iteration(step, epoch_end)
        for key, value in row.items():
            if key not in BOOKKEEPING and _is_number(value):
                run.val.setdefault(key, Series()).add(x, value)
    return run


def _read_text_log(log_path: str) -> str:
    """The ``<timestamp>.log`` text log of a scalar log ('' if none)."""
    folder = osp.dirname(osp.abspath(log_path))
    if osp.basename(folder) == 'vis_data':
        folder = osp.dirname(folder)
    text_log = osp.join(folder, osp.basename(folder) + '.log')
    if not osp.isfile(text_log):
        return ''
    with open(text_log, encoding='utf-8', errors='replace') as f:
        return f.read()


TRAIN_PROGRESS = re.compile(r'Epoch\(train\)\s*\[(\d+)\]\[\s*(\d+)/(\d+)\]')
SAVED_EPOCH = re.compile(r'Saving checkpoint at (\d+) epochs')
VAL_EPOCH = re.compile(r'Epoch\(val\)\s*\[(\d+)\]\[\s*(\d+)/(\d+)\]')


def _iters_per_epoch_from_text(text: str) -> Optional[int]:
    """``N`` of the text log's last ``Epoch(train) [e][i/N]`` line."""
    found = TRAIN_PROGRESS.findall(text)
    return int(found[-1][2]) if found else None


def _iters_per_epoch_from_scalars(
        epoch_iters: Dict[int, List[float]]) -> Optional[int]:
    """The epoch length from the first lines of consecutive epochs.

    Every epoch is logged from the same inner iteration on (the logging
    interval, or the epoch's end when it is shorter), so the first lines of
    epochs ``e`` and ``e + 1`` are exactly one epoch apart.
    """
    epochs = sorted(epoch_iters)
    for e, nxt in zip(epochs, epochs[1:]):
        if nxt == e + 1:
            length = min(epoch_iters[nxt]) - min(epoch_iters[e])
            if length > 0 and float(length).is_integer():
                return int(length)
    return None


def _completed_epochs(epoch_iters, val_rows, text: str) -> set:
    """Epochs known to have finished: followed by another, validated, or
    checkpointed."""
    last = max(epoch_iters)
    done = {e for e in epoch_iters if e < last}
    done |= {row['step'] for row in val_rows
             if _is_number(row.get('step')) and row['step'] <= last}
    done |= {int(e) for e in SAVED_EPOCH.findall(text) if int(e) <= last}
    done |= {int(e) for e, i, n in VAL_EPOCH.findall(text)
             if int(e) <= last}
    return done


def _is_train_row(row) -> bool:
    return 'iter' in row or any(k.startswith('loss') for k in row)


def _val_iteration(step, epoch_end: Dict[int, float]) -> float:
    """The iteration of a validation line logged at ``step``."""
    if not epoch_end:
        return step  # iteration-based: step is the iteration
    if step in epoch_end:
        return epoch_end[step]
    # An epoch whose training lines are missing: extrapolate.
    per_epoch = max(epoch_end.values()) / max(max(epoch_end), 1)
    return step * per_epoch


def _default_label(path: str, log_path: str) -> str:
    path = osp.normpath(path)
    if osp.isfile(path):
        # .../<work_dir>/<timestamp>/vis_data/scalars.json -> <work_dir>
        parts = osp.normpath(log_path).split(os.sep)
        if len(parts) >= 4 and parts[-2] == 'vis_data':
            return parts[-4]
        return osp.splitext(osp.basename(path))[0]
    if _timestamp_log(path):
        return osp.basename(osp.dirname(path)) or osp.basename(path)
    return osp.basename(path)


def default_metrics(runs: Sequence[Run]) -> List[str]:
    """``loss`` first, then the other loss components, then box mAP."""
    names = set().union(*(r.metrics for r in runs))
    losses = sorted((m for m in names if m.startswith('loss')),
                    key=lambda m: (m != 'loss', m))
    evals = [DEFAULT_EVAL_METRIC] if DEFAULT_EVAL_METRIC in names else []
    return losses + evals


def check_metrics(runs: Sequence[Run], metrics: Sequence[str]) -> None:
    """Raise naming the available metrics if one is in no run."""
    available = set().union(*(r.metrics for r in runs))
    missing = [m for m in metrics if m not in available]
    if missing:
        raise CompareRunsError(
            f'compare_runs: metric {", ".join(missing)} is in none of the '
            f'logs; available: {", ".join(sorted(available)) or "none"}')
    if not metrics:
        raise CompareRunsError(
            'compare_runs: nothing to plot: the logs have no loss* or '
            f'{DEFAULT_EVAL_METRIC} scalars; available: '
            f'{", ".join(sorted(available)) or "none"}')


def moving_average(values: Sequence[float], window: int) -> List[float]:
    """Trailing mean over ``window`` points (shorter at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _is_eval_metric(metric: str) -> bool:
    return not metric.startswith('loss')


def draw_metric(ax, runs: Sequence[Run], metric: str, smooth: int = 1):
    """Every run's ``metric`` against iteration on ``ax``."""
    for index, run in enumerate(runs):
        series = run.series(metric)
        if series is None:
            continue
        color = f'C{index}'
        if _is_eval_metric(metric):
            ax.plot(series.iters, series.values, marker='o', color=color,
                    label=run.label)
        elif smooth > 1:
            ax.plot(series.iters, series.values, color=color, alpha=0.25,
                    linewidth=0.8)
            ax.plot(series.iters, moving_average(series.values, smooth),
                    color=color, label=run.label)
        else:
            ax.plot(series.iters, series.values, color=color,
                    label=run.label)
    ax.set_xlabel('iteration')
    ax.set_ylabel(metric)
    title = metric
    if smooth > 1 and not _is_eval_metric(metric):
        title += f' (moving average of {smooth} logs)'
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize='small')


def save_png(fig, path, dpi):
    """Save as a 256-colour PNG (a third of the size, same look)."""
    import io

    from PIL import Image
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=dpi)
    plt.close(fig)
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert('RGB').quantize(256).save(path, optimize=True)


def plot_metric(runs, metric, path, smooth=1, title=None):
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    draw_metric(ax, runs, metric, smooth)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path, dpi=100)


def plot_combined(runs, metrics, path, smooth=1, title=None):
    """All metrics on one figure, one panel each."""
    ncols = min(2, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.6 * ncols,
                                                     3.6 * nrows),
                             squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        draw_metric(ax, runs, metric, smooth)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis('off')
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path, dpi=80)


def _fmt(value: Optional[float]) -> str:
    if value is None:
        return '-'
    return f'{value:.4f}' if abs(value) < 1000 else f'{value:.4g}'


def summary_table(runs: Sequence[Run], metrics: Sequence[str]) -> str:
    """Markdown: per run, the last logged value of each metric.

    Evaluation metrics (``coco/bbox_mAP`` ...) also get their best value and
    the iteration it was reached at.
    """
    header = ['Run', 'iterations'] + [f'final {m}' for m in metrics]
    evals = [m for m in metrics if _is_eval_metric(m)]
    header += [f'best {m} (iter)' for m in evals]
    lines = ['| ' + ' | '.join(header) + ' |',
             '|' + '---|' * len(header)]
    for run in runs:
        cells = [run.label, _fmt_iter(run.last_iter)]
        for metric in metrics:
            series = run.series(metric)
            cells.append(_fmt(series.values[-1] if series else None))
        for metric in evals:
            series = run.series(metric)
            if series:
                best = max(range(len(series.values)),
                           key=series.values.__getitem__)
                cells.append(f'{_fmt(series.values[best])} '
                             f'({_fmt_iter(series.iters[best])})')
            else:
                cells.append('-')
        lines.append('| ' + ' | '.join(c.replace('|', '\\|')
                                       for c in cells) + ' |')
    return '\n'.join(lines) + '\n'


def _fmt_iter(value) -> str:
    if value is None:
        return '-'
    return str(int(value)) if float(value).is_integer() else f'{value:g}'


def metric_filename(metric: str) -> str:
    return metric.replace('/', '_').replace(os.sep, '_') + '.png'


def compare(work_dirs: Sequence[str], out_dir: str,
            labels: Optional[Sequence[str]] = None,
            metrics: Optional[Sequence[str]] = None, smooth: int = 1,
            combined: Optional[str] = None,
            title: Optional[str] = None) -> Tuple[List[str], str]:
    """Read the runs, write the figures and ``summary.md``.

    Returns:
        The written file paths and the Markdown table.
    """
    if not work_dirs:
        raise CompareRunsError('compare_runs: give at least one WORK_DIR')
    if labels is not None and len(labels) != len(work_dirs):
        raise CompareRunsError(
            f'compare_runs: {len(labels)} labels for {len(work_dirs)} runs')
    if smooth < 1:
        raise CompareRunsError(f'compare_runs: --smooth must be >= 1, '
                               f'got {smooth}')
    runs = [
        read_run(path, labels[i] if labels else None)
        for i, path in enumerate(work_dirs)
    ]
    metrics = list(metrics) if metrics else default_metrics(runs)
    check_metrics(runs, metrics)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for metric in metrics:
        path = osp.join(out_dir, metric_filename(metric))
        plot_metric(runs, metric, path, smooth, title)
        written.append(path)
    if combined:
        if osp.dirname(combined):
            os.makedirs(osp.dirname(combined), exist_ok=True)
        plot_combined(runs, metrics, combined, smooth, title)
        written.append(combined)
    table = summary_table(runs, metrics)
    summary = osp.join(out_dir, 'summary.md')
    with open(summary, 'w', encoding='utf-8') as f:
        f.write(table)
    written.append(summary)
    return written, table


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Compare MMEngine training runs: loss components and '
        'box mAP against iteration, plus a Markdown table of final figures.')
    parser.add_argument('work_dirs', nargs='+', metavar='WORK_DIR',
                        help='work dir, <timestamp> folder or scalar log')
    parser.add_argument('--labels', nargs='+',
                        help='legend label per run (default: folder name)')
    parser.add_argument('--metrics', nargs='+',
                        help='metrics to plot (default: loss*, then '
                        f'{DEFAULT_EVAL_METRIC} when logged)')
    parser.add_argument('--out-dir', default='work_dirs/compare_runs',
                        help='folder for <metric>.png and summary.md')
    parser.add_argument('--combined', metavar='PNG',
                        help='also draw every metric on one figure here')
    parser.add_argument('--smooth', type=int, default=1,
                        help='moving-average window for losses (default 1)')
    parser.add_argument('--title', help='figure title')
    return parser, parser.parse_args(argv)


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    try:
        written, table = compare(args.work_dirs, args.out_dir, args.labels,
                                 args.metrics, args.smooth, args.combined,
                                 args.title)
    except CompareRunsError as exc:
        parser.exit(2, f'{exc}\n')
    sys.stdout.write(table)
    for path in written:
        print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
