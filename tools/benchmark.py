#!/usr/bin/env python
"""Benchmark mmloss's losses against MMDetection's: speed, memory, agreement.

For every selected loss the tool builds mmloss's module and, where mmdet is
installed, mmdet's twin from the *same* config dict::

    mmloss.registry.MODELS.build(dict(type='mmloss.FocalLoss', **cfg))
    mmdet.registry.MODELS.build(dict(type='FocalLoss', **cfg))

feeds both identical inputs at two named sizes (``large``: the sizes a
dense detector really sees, 100k anchors x 80 classes or 200k boxes;
``small``: about 1k rows, what a RoI head sees) and at any row counts given
with ``--rows`` (the row-count axis), and measures for each:

* **time** of forward + backward: warm-up runs, then the median of
  ``--repeat`` runs (more for fast losses: enough to fill ``--min-time``
  seconds per side) with a fixed torch thread count. The two libraries run
  interleaved in one process, so background load hits both alike. CPU runs
  use ``time.perf_counter``; CUDA runs use CUDA events and synchronize.
* **saved for backward**: the bytes of the distinct storages the autograd
  graph keeps alive between forward and backward, collected with
  ``torch.autograd.graph.saved_tensors_hooks`` (which also sees tensors a
  custom ``autograd.Function`` saves with ``ctx.save_for_backward``) plus
  any tensor a custom Function stashes as a ``ctx`` attribute.
* **peak memory**: the highest amount of memory allocated above the
  starting point during forward + backward (gradient included). On CPU it
  is read from the torch profiler's allocation events (exact for torch's
  allocator); when that is unavailable, from the process's peak resident
  set (``VmHWM``), which is approximate and labelled so. On CUDA it is
  ``torch.cuda.max_memory_allocated``.
* **agreement**: loss value and input gradient of freshly built modules
  (stateful losses such as GHM and Seesaw start from the same state) must
  agree to ``rtol=1e-4``.

It prints a table, writes ``benchmark.json`` and ``benchmark.md`` into
``--out`` (default ``benchmark_results/``), and exits non-zero when any
agreement check fails or a loss raises (1), or for an unknown loss name (2).
A loss mmloss does not have yet is reported as ``missing``, not a failure.

Examples::

    python tools/benchmark.py                       # everything, both sizes
    python tools/benchmark.py --losses FocalLoss GHMC --size large
    python tools/benchmark.py --size small --repeat 1 --warmup 0
    python tools/benchmark.py --size small --rows 512 4096 32768  # row axis
    python tools/benchmark.py --device cuda
    python tools/benchmark.py --readme README.md    # refresh README's table
"""
import argparse
import contextlib
import copy
import datetime
import functools
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

SIZES = ('small', 'large')
#: A named size, or a row count given with ``--rows``.
Size = Union[str, int]
# Anchors per step in a RetinaNet-style head, and boxes for regression losses.
NUM_ANCHORS = {'small': 1_000, 'large': 100_000}
NUM_BOXES = {'small': 1_000, 'large': 200_000}
NUM_CLASSES = 80
# Rows of a distribution (GFL / LD) head: one per box side, 17 bins.
NUM_SIDES = {'small': 1_000, 'large': 200_000}
DFL_BINS = 17
# RoIs per step for the LVIS (1203 classes) Seesaw head.
NUM_ROIS = {'small': 256, 'large': 4_096}
SEESAW_CLASSES = 1203
# Mask2Former-style point-sampled masks: queries x points.
DICE_SHAPE = {'small': (4, 784), 'large': (200, 12_544)}
# CenterNet heatmap: batch x classes x H x W.
HEATMAP_SHAPE = {'small': (1, NUM_CLASSES, 32, 32),
                 'large': (4, NUM_CLASSES, 128, 128)}

RTOL = 1e-4
MIB = 2 ** 20


def _rows(table: Dict[str, int], size) -> int:
    """Rows for ``size``: a named size looks ``table`` up, an int (from
    ``--rows``) is the row count itself."""
    return table[size] if isinstance(size, str) else int(size)


def _shape(table: Dict[str, tuple], size, row_dim: int = 0) -> tuple:
    """A named size's shape, or that shape with ``size`` rows along
    ``row_dim`` (for example masks: queries x points)."""
    if isinstance(size, str):
        return table[size]
    shape = list(table['small'])
    shape[row_dim] = int(size)
    return tuple(shape)

# --------------------------------------------------------------------------
# Inputs. Every maker returns ``(args, shape)``: ``args[0]`` is the
# prediction, the one input that requires grad; the rest go to the loss
# positionally, exactly as a detection head calls it.
# --------------------------------------------------------------------------

Inputs = Tuple[tuple, str]


def _class_labels(n: int, num_classes: int, gen: torch.Generator,
                  pos_fraction: float = 0.02) -> torch.Tensor:
    """Labels in ``[0, num_classes]``; ``num_classes`` is background."""
    labels = torch.randint(0, num_classes, (n, ), generator=gen)
    background = torch.rand(n, generator=gen) >= pos_fraction
    return labels.masked_fill(background, num_classes)


def _boxes(n: int, gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(pred, target)``: valid (x1, y1, x2, y2) boxes, pred near target."""
    xy = torch.rand(n, 2, generator=gen) * 800
    wh = torch.rand(n, 2, generator=gen) * 200 + 4
    target = torch.cat([xy, xy + wh], dim=1)
    noise = (torch.rand(n, 4, generator=gen) * 2 - 1) * 0.25 * wh.repeat(1, 2)
    moved = target + noise
    pred = torch.cat([torch.minimum(moved[:, :2], moved[:, 2:]),
                      torch.maximum(moved[:, :2], moved[:, 2:]) + 0.5], dim=1)
    return pred, target


def sigmoid_cls_inputs(size: 'Size', gen: torch.Generator) -> Inputs:
    """Logits (N, 80) and integer labels (N,), 80 = background."""
    n = _rows(NUM_ANCHORS, size)
    pred = torch.randn(n, NUM_CLASSES, generator=gen) * 2
    return (pred, _class_labels(n, NUM_CLASSES, gen)), f'{n}x{NUM_CLASSES}'


def ghmc_inputs(size: 'Size', gen: torch.Generator) -> Inputs:
    """As a RetinaNet head calls GHM-C: logits, labels, label_weight (N,)."""
    (pred, labels), shape = sigmoid_cls_inputs(size, gen)
    label_weight = (torch.rand(len(labels), generator=gen) > 0.1).float()
    return (pred, labels, label_weight), shape


def softmax_cls_inputs(size: 'Size', gen: torch.Generator) -> Inputs:
    """Logits (N, 81) and labels (N,) for a softmax classifier."""
    n = _rows(NUM_ANCHORS, size)
    pred = torch.randn(n, NUM_CLASSES + 1, generator=gen) * 2
    labels = _class_labels(n, NUM_CLASSES, gen)
    return (pred, labels), f'{n}x{NUM_CLASSES + 1}'


def varifocal_inputs(size: 'Size', gen: torch.Generator) -> Inputs:
    """Logits (N, 80), IoU-aware targets (N, 80): IoU at the gt class."""
    (pred, labels), shape = sigmoid_cls_inputs(size, gen)
    target = torch.zeros_like(pred)
    pos = (labels < NUM_CLASSES).nonzero().squeeze(1)
    target[pos, labels[pos]] = torch.rand(len(pos), generator=gen)
    return (pred, target), shape


def quality_focal_inputs(size: 'Size', gen: torch.Generator) -> Inputs:
    """Logits (N, 80) and the ``(labels, scores)`` tuple QFL takes."""
    (pred, labels), shape = sigmoid_cls_inputs(size, gen)
    scores = torch.rand(len(labels), generator=gen)
    scores = scores.masked_fill(labels == NUM_CLASSES, 0.0)
    return (pred, (labels, scores)), shape


def distribution_inputs(size: 'Size', gen: torch.Generator) -> Inputs:
    """Side-distribution logits (N, 17) and float distances in [0, 16)."""
    n = _rows(NUM_SIDES, size)
    pred = torch.randn(n, DFL_BINS, generator=gen)
    label = torch.rand(n, generator=gen) * (DFL_BINS - 1 - 1e-2)
    return (pred, label), f'{n}x{DFL_BINS}'


def distillation_inputs(size: 'Size', gen: torch.Generator) -> Inputs:
    """Student and teacher logits, (N, 17) each."""
    n = _rows(NUM_SIDES, size)
    pred = torch.randn(n, DFL_BINS, generator=gen)
    soft_label = torch.randn(n, DFL_BINS, generator=gen)
    return (pred, soft_label), f'{n}x{DFL_BINS}'


def heatmap_inputs(size: 'Size', gen: torch.Generator) -> Inputs:
    """Probabilities and a Gaussian-like heatmap with a few exact peaks."""
    shape = _shape(HEATMAP_SHAPE, size, row_dim=2)
    pred = torch.rand(shape, generator=gen) * 0.98 + 0.01
    target = torch.rand(shape, generator=gen) ** 8
    target[torch.rand(shape, generator=gen) < 1e-3] = 1.0
    return (pred, target), 'x'.join(map(str, shape))


def seesaw_inputs(size: 'Size', gen: torch.Generator) -> Inputs:
    """Scores (N, 1203 + 2) and labels (N,), 1203 = background."""
    n = _rows(NUM_ROIS, size)
    pred = torch.randn(n, SEESAW_CLASSES + 2, generator=gen)
    labels = _class_labels(n, SEESAW_CLASSES, gen, pos_fraction=0.25)
    return (pred, labels), f'{n}x{SEESAW_CLASSES + 2}'


def mask_inputs(size: 'Size', gen: torch.Generator) -> Inputs:
    """Mask logits and binary mask targets, (queries, points)."""
    shape = _shape(DICE_SHAPE, size)
    pred = torch.randn(shape, generator=gen)
    target = (torch.rand(shape, generator=gen) > 0.7).float()
    return (pred, target), 'x'.join(map(str, shape))


def delta_inputs(size: 'Size', gen: torch.Generator) -> Inputs:
    """Regression deltas (N, 4) and their targets."""
    n = _rows(NUM_BOXES, size)
    pred = torch.randn(n, 4, generator=gen) * 0.5
    target = torch.randn(n, 4, generator=gen) * 0.5
    return (pred, target), f'{n}x4'


def ghmr_inputs(size: 'Size', gen: torch.Generator) -> Inputs:
    """Deltas, targets and a (N, 4) label_weight, as GHM-R takes them."""
    (pred, target), shape = delta_inputs(size, gen)
    valid = (torch.rand(len(pred), 1, generator=gen) > 0.1).float()
    return (pred, target, valid.expand(-1, 4).contiguous()), shape


def box_inputs(size: 'Size', gen: torch.Generator) -> Inputs:
    """Predicted and target boxes (N, 4), (x1, y1, x2, y2)."""
    n = _rows(NUM_BOXES, size)
    return _boxes(n, gen), f'{n}x4'


# --------------------------------------------------------------------------
# The cases: one per twin (mmdet has a loss of the same name) and one per
# mmloss-only loss. ``cfg`` is the config dict without ``type``.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One row family of the benchmark.

    Attributes:
        key: the row's name, unique (``'CrossEntropyLoss(sigmoid)'``).
        loss_type: the registered class name in both registries.
        cfg: the constructor arguments, shared by both libraries.
        make_inputs: ``(size, generator) -> (args, shape)``.
        in_mmdet: whether mmdet has a twin to compare against.
    """
    key: str
    loss_type: str
    cfg: Dict = field(default_factory=dict)
    make_inputs: Callable[[Size, torch.Generator], Inputs] = box_inputs
    in_mmdet: bool = True


CASES: Tuple[Case, ...] = (
    Case('FocalLoss', 'FocalLoss', dict(use_sigmoid=True, gamma=2.0,
                                        alpha=0.25), sigmoid_cls_inputs),
    Case('GHMC', 'GHMC', dict(bins=30, momentum=0.75, use_sigmoid=True),
         ghmc_inputs),
    Case('GHMR', 'GHMR', dict(mu=0.02, bins=10, momentum=0.7), ghmr_inputs),
    Case('CrossEntropyLoss', 'CrossEntropyLoss', dict(use_sigmoid=False),
         softmax_cls_inputs),
    Case('CrossEntropyLoss(sigmoid)', 'CrossEntropyLoss',
         dict(use_sigmoid=True), sigmoid_cls_inputs),
    Case('CrossEntropyCustomLoss', 'CrossEntropyCustomLoss',
         dict(use_sigmoid=False, num_classes=NUM_CLASSES), softmax_cls_inputs),
    Case('VarifocalLoss', 'VarifocalLoss', dict(use_sigmoid=True, alpha=0.75,
                                                gamma=2.0, iou_weighted=True),
         varifocal_inputs),
    Case('QualityFocalLoss', 'QualityFocalLoss', dict(use_sigmoid=True,
                                                      beta=2.0),
         quality_focal_inputs),
    Case('DistributionFocalLoss', 'DistributionFocalLoss', dict(),
         distribution_inputs),
    Case('GaussianFocalLoss', 'GaussianFocalLoss', dict(alpha=2.0, gamma=4.0),
         heatmap_inputs),
    Case('SeesawLoss', 'SeesawLoss', dict(p=0.8, q=2.0,
                                          num_classes=SEESAW_CLASSES),
         seesaw_inputs),
    Case('KnowledgeDistillationKLDivLoss', 'KnowledgeDistillationKLDivLoss',
         dict(T=10), distillation_inputs),
    Case('DiceLoss', 'DiceLoss', dict(use_sigmoid=True, activate=True),
         mask_inputs),
    Case('L1Loss', 'L1Loss', dict(), delta_inputs),
    Case('SmoothL1Loss', 'SmoothL1Loss', dict(beta=1.0), delta_inputs),
    Case('BalancedL1Loss', 'BalancedL1Loss', dict(alpha=0.5, gamma=1.5,
                                                  beta=1.0), delta_inputs),
    Case('MSELoss', 'MSELoss', dict(), delta_inputs),
    Case('IoULoss', 'IoULoss', dict(mode='log'), box_inputs),
    Case('GIoULoss', 'GIoULoss', dict(), box_inputs),
    Case('DIoULoss', 'DIoULoss', dict(), box_inputs),
    Case('CIoULoss', 'CIoULoss', dict(), box_inputs),
    Case('EIoULoss', 'EIoULoss', dict(), box_inputs),
    Case('SIoULoss', 'SIoULoss', dict(), box_inputs),
    Case('BoundedIoULoss', 'BoundedIoULoss', dict(beta=0.2, eps=1e-3),
         box_inputs),
    # mmloss only: benchmarked alone, no mmdet column.
    Case('AlphaIoULoss', 'AlphaIoULoss', dict(), box_inputs, in_mmdet=False),
    Case('WiseIoULoss', 'WiseIoULoss', dict(), box_inputs, in_mmdet=False),
    Case('MPDIoULoss', 'MPDIoULoss', dict(img_size=(1024, 1024)), box_inputs,
         in_mmdet=False),
    Case('FocalEIoULoss', 'FocalEIoULoss', dict(), box_inputs, in_mmdet=False),
    Case('VariantIoULoss', 'VariantIoULoss', dict(), box_inputs,
         in_mmdet=False),
    Case('NWDLoss', 'NWDLoss', dict(), box_inputs, in_mmdet=False),
    Case('Poly1FocalLoss', 'Poly1FocalLoss', dict(), sigmoid_cls_inputs,
         in_mmdet=False),
)

# Issue targets at the large size on CPU: minimum speed-up, maximum ratio of
# saved-for-backward bytes, and whether peak memory may exceed mmdet's.
TARGETS = {
    'FocalLoss': dict(speedup=3.0, saved_ratio=0.25),
    'GHMC': dict(speedup=8.0, saved_ratio=1.0),
}
DEFAULT_TARGET = dict(speedup=1.5, saved_ratio=1.0)
# At the small size (about 1k rows, what a RoI head sees) no twin may be
# slower than mmdet: there the dispatcher takes the plain path where it is
# faster. Timings of well under a millisecond move by a few percent between
# runs, which SMALL_SPEED_NOISE allows.
SMALL_TARGET = dict(speedup=1.0)
SMALL_SPEED_NOISE = 0.05
MEMORY_SLACK_BYTES = 64 * 1024
# the most timed runs --min-time may ask for
MAX_RUNS = 400


def select_cases(names: Optional[Sequence[str]]) -> List[Case]:
    """The cases named (by row key or loss class name); all when ``None``.

    Raises:
        ValueError: for a name matching no case, listing the known ones.
    """
    if not names:
        return list(CASES)
    chosen, unknown = [], []
    for name in names:
        hits = [c for c in CASES
                if name.lower() in (c.key.lower(), c.loss_type.lower())]
        if not hits:
            unknown.append(name)
        chosen.extend(c for c in hits if c not in chosen)
    if unknown:
        known = sorted({c.key for c in CASES} | {c.loss_type for c in CASES})
        raise ValueError(f'unknown loss name(s): {", ".join(unknown)}; '
                         f'known: {", ".join(known)}')
    return chosen


# --------------------------------------------------------------------------
# Building the two libraries' modules.
# --------------------------------------------------------------------------


def mmloss_registry():
    """mmloss's MODELS registry (importing mmloss registers every loss)."""
    import mmloss  # noqa: F401
    from mmloss.registry import MODELS
    return MODELS


_MMDET_REGISTRY = []


def mmdet_registry():
    """mmdet's MODELS registry with its modules registered, or ``None``."""
    if not _MMDET_REGISTRY:
        try:
            from mmdet.registry import MODELS
            from mmdet.utils import register_all_modules
            register_all_modules(init_default_scope=False)
            _MMDET_REGISTRY.append(MODELS)
        except ImportError:
            _MMDET_REGISTRY.append(None)
    return _MMDET_REGISTRY[0]


def has_mmloss(case: Case) -> bool:
    """Whether mmloss registers ``case.loss_type`` (in its own scope)."""
    return case.loss_type in mmloss_registry().module_dict


def build_mmloss(case: Case, device: torch.device) -> torch.nn.Module:
    cfg = dict(type=f'mmloss.{case.loss_type}', **copy.deepcopy(case.cfg))
    return mmloss_registry().build(cfg).to(device)


def build_mmdet(case: Case, device: torch.device) -> torch.nn.Module:
    cfg = dict(type=case.loss_type, **copy.deepcopy(case.cfg))
    return mmdet_registry().build(cfg).to(device)


# --------------------------------------------------------------------------
# Measuring one module.
# --------------------------------------------------------------------------


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device) for o in obj)
    return obj


def _scalar(out) -> torch.Tensor:
    """A loss output as one scalar: dict outputs (Seesaw) are summed."""
    if isinstance(out, dict):
        out = sum(_scalar(v) for v in out.values())
    elif isinstance(out, (tuple, list)):
        out = sum(_scalar(v) for v in out)
    return out if out.dim() == 0 else out.sum()


def forward_backward(loss: torch.nn.Module,
                     args: tuple) -> Tuple[torch.Tensor, torch.Tensor]:
    """One forward + backward on a fresh leaf; ``(value, grad of pred)``."""
    pred = args[0].detach().requires_grad_()
    value = _scalar(loss(pred, *args[1:]))
    value.backward()
    return value.detach(), pred.grad


def time_once(loss: torch.nn.Module, args: tuple,
              device: torch.device) -> float:
    """Milliseconds of one forward + backward."""
    pred = args[0].detach().requires_grad_()
    rest = args[1:]
    if device.type == 'cuda':
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        _scalar(loss(pred, *rest)).backward()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    begin = time.perf_counter()
    _scalar(loss(pred, *rest)).backward()
    return (time.perf_counter() - begin) * 1e3


def _graph_nodes(root) -> List:
    seen, stack, nodes = set(), [root], []
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        stack.extend(n for n, _ in getattr(node, 'next_functions', ()))
    return nodes


class SavedTensorMeter:
    """Counts what an autograd graph keeps alive for its backward pass.

    Use :meth:`hooks` around the forward, then :meth:`finish` with its
    output. Two totals come out:

    * ``storage_bytes``: the bytes of the *distinct storages* behind the
      saved tensors (a view keeps its whole storage alive; a tensor saved
      twice counts once). This is the memory the graph really holds.
    * ``tensor_bytes``: ``numel * element_size`` summed over every saved
      tensor, repeats included -- the simpler count the issue quotes.

    The hooks see every tensor saved by built-in ops and by
    ``ctx.save_for_backward``; :meth:`finish` adds tensors a custom
    ``autograd.Function`` kept as plain ``ctx`` attributes.
    """

    def __init__(self):
        self.storages = {}
        self.tensor_bytes = 0

    def record(self, tensor) -> None:
        if not isinstance(tensor, torch.Tensor) or \
                tensor.layout != torch.strided:
            return
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        key = (str(storage.device), storage.data_ptr())
        self.storages[key] = storage.nbytes()
        self.tensor_bytes += tensor.numel() * tensor.element_size()

    def _pack(self, tensor):
        self.record(tensor)
        return tensor

    def hooks(self):
        """The ``saved_tensors_hooks`` context that does the counting."""
        return torch.autograd.graph.saved_tensors_hooks(self._pack,
                                                        lambda t: t)

    def finish(self, value: torch.Tensor) -> 'SavedTensorMeter':
        """Add what custom Functions in ``value``'s graph keep outside
        ``save_for_backward``: tensors as ``ctx`` attributes, and tensors
        that callables kept on ``ctx`` (a kernel or a plain formula for
        backward) hold in their closures or bound arguments."""
        seen = set()
        for node in _graph_nodes(value.grad_fn):
            for attr in getattr(node, '__dict__', {}).values():
                self._record_held(attr, seen, depth=0)
        return self

    def _record_held(self, obj, seen, depth: int) -> None:
        if depth > 6 or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            self.record(obj)
        elif isinstance(obj, (tuple, list)):
            for item in obj:
                self._record_held(item, seen, depth + 1)
        elif isinstance(obj, dict):
            for item in obj.values():
                self._record_held(item, seen, depth + 1)
        elif isinstance(obj, functools.partial):
            self._record_held((obj.func, obj.args, obj.keywords), seen,
                              depth + 1)
        elif callable(obj) and getattr(obj, '__closure__', None):
            for cell in obj.__closure__:
                try:
                    self._record_held(cell.cell_contents, seen, depth + 1)
                except ValueError:  # an empty cell
                    pass

    @property
    def storage_bytes(self) -> int:
        return sum(self.storages.values())


@contextlib.contextmanager
def _silenced_stderr_fd():
    """Mute file descriptor 2: kineto logs every profiler start and stop."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, 'w') as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak_from_profiler(run: Callable[[], None]) -> int:
    """Peak bytes above the start, from the profiler's allocation events."""
    from torch.profiler import ProfilerActivity, profile
    with _silenced_stderr_fd(), profile(activities=[ProfilerActivity.CPU],
                                        profile_memory=True) as prof:
        run()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == '[memory]'
              and e.device_type() == torch.autograd.DeviceType.CPU]
    if not events:
        raise RuntimeError('the profiler recorded no allocations')
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def _read_status_kb(field_name: str) -> int:
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith(field_name + ':'):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f'{field_name} not in /proc/self/status')


def _cpu_peak_from_rss(run: Callable[[], None]) -> int:
    """Approximate peak: growth of the peak resident set during ``run``."""
    with open('/proc/self/clear_refs', 'w') as refs:
        refs.write('5')  # resets VmHWM to the current resident set
    start = _read_status_kb('VmRSS')
    run()
    return max(_read_status_kb('VmHWM') - start, 0)


def measure_memory(loss: torch.nn.Module, args: tuple,
                   device: torch.device) -> Dict:
    """Saved-for-backward bytes and peak bytes of one forward + backward."""
    result = {}

    def run():
        meter = SavedTensorMeter()
        pred = args[0].detach().requires_grad_()
        with meter.hooks():
            value = _scalar(loss(pred, *args[1:]))
        meter.finish(value)
        result['saved_bytes'] = meter.storage_bytes
        result['saved_tensor_bytes'] = meter.tensor_bytes
        value.backward()
        del value, pred, meter

    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run()
        torch.cuda.synchronize(device)
        result['peak_bytes'] = torch.cuda.max_memory_allocated(device) - base
        result['peak_method'] = 'cuda.max_memory_allocated'
        return result
    try:
        result['peak_bytes'] = _cpu_peak_from_profiler(run)
        result['peak_method'] = 'profiler'
    except Exception:  # noqa: BLE001 - any profiler failure: fall back
        try:
            result['peak_bytes'] = _cpu_peak_from_rss(run)
            result['peak_method'] = 'rss (approximate)'
        except (OSError, RuntimeError):
            run()
            result['peak_bytes'] = None
            result['peak_method'] = 'unavailable'
    return result


# --------------------------------------------------------------------------
# Agreement.
# --------------------------------------------------------------------------


def compare(ours: torch.Tensor, ref: torch.Tensor,
            rtol: float = RTOL) -> Tuple[bool, float, str]:
    """``(agree, max relative error, note)`` of ours against mmdet's.

    Elements where mmdet is not finite are skipped (the numerics policy
    lets mmloss return a finite value there); everywhere else ours must be
    finite and within ``rtol`` of mmdet's, with an absolute floor of
    ``rtol * 0.1 * max|ref|`` for elements that cancel to about zero.
    """
    if ours is None or ref is None:
        return (ours is None) == (ref is None), 0.0, 'no gradient'
    if ours.shape != ref.shape:
        return False, math.inf, f'shape {tuple(ours.shape)} vs ' \
                                f'{tuple(ref.shape)}'
    ours, ref = ours.double(), ref.double()
    finite = torch.isfinite(ref)
    note = '' if bool(finite.all()) else 'mmdet non-finite skipped'
    if not bool(torch.isfinite(ours[finite]).all()):
        return False, math.inf, 'mmloss non-finite'
    ours, ref = ours[finite], ref[finite]
    if ref.numel() == 0:
        return True, 0.0, note
    scale = float(ref.abs().max())
    floor = rtol * 0.1 * scale
    err = (ours - ref).abs()
    agree = bool((err <= rtol * ref.abs() + floor).all())
    rel = float((err / (ref.abs() + floor)).max()) if scale > 0 \
        else float(err.max())
    return agree, rel, note


def agreement(ours: Tuple[torch.Tensor, torch.Tensor],
              ref: Tuple[torch.Tensor, torch.Tensor]) -> Dict:
    """Compare ``(value, grad)`` of mmloss against mmdet's."""
    value_ok, value_err, value_note = compare(ours[0], ref[0])
    grad_ok, grad_err, grad_note = compare(ours[1], ref[1])
    notes = [f'{what}: {note}' for what, note in
             (('value', value_note), ('grad', grad_note)) if note]
    return dict(agree=value_ok and grad_ok, value_rel_err=value_err,
                grad_rel_err=grad_err, mmloss_value=float(ours[0]),
                mmdet_value=float(ref[0]), note='; '.join(notes))


# --------------------------------------------------------------------------
# Running a case.
# --------------------------------------------------------------------------


def _side(status: str, **extra) -> Dict:
    return dict(status=status, ms=None, runs_ms=[], saved_bytes=None,
                peak_bytes=None, error=None, **extra)


def _safe_ratio(num, den) -> Optional[float]:
    if num is None or den is None or den == 0:
        return None
    return num / den


def more_memory(ours: Optional[int], ref: Optional[int]) -> bool:
    """Whether ``ours`` bytes exceed ``ref`` by more than noise.

    Up to 1% or 64 KiB more (whichever is larger) counts as the same: a few
    bytes of scalars or a byte per row of a mask are not "more memory".
    """
    if ours is None or ref is None:
        return False
    return ours > ref + max(0.01 * ref, MEMORY_SLACK_BYTES)


def target_verdict(row: Dict) -> Optional[str]:
    """``'met'``, ``'missed: ...'``, or ``None`` where no target applies."""
    if row['speedup'] is None:
        return None
    if row['size'] == 'small':
        floor = SMALL_TARGET['speedup'] * (1 - SMALL_SPEED_NOISE)
        if row['speedup'] < floor:
            return (f'missed: speed {row["speedup"]:.2f}x < '
                    f'{SMALL_TARGET["speedup"]}x')
        return 'met'
    if row['size'] != 'large':
        return None
    goal = TARGETS.get(row['loss_type'], DEFAULT_TARGET)
    ours, ref = row['mmloss'], row['mmdet']
    misses = []
    if row['speedup'] < goal['speedup']:
        misses.append(f'speed {row["speedup"]:.2f}x < {goal["speedup"]}x')
    ratio = row['saved_ratio']
    if ratio is not None and ratio < 1.0 and ratio > goal['saved_ratio']:
        misses.append(f'saved {ratio:.3f} > {goal["saved_ratio"]}')
    elif more_memory(ours['saved_bytes'], ref['saved_bytes']):
        misses.append(f'saved {ratio:.3f} > 1')
    if more_memory(ours['peak_bytes'], ref['peak_bytes']):
        misses.append(f'peak {row["peak_ratio"]:.3f} > 1')
    return 'met' if not misses else 'missed: ' + ', '.join(misses)


def timed_runs(repeat: int, min_time: float, warmup_ms) -> int:
    """How many timed runs: at least ``repeat``, and for fast losses enough
    to fill about ``min_time`` seconds per side (the slower side's warm-up
    time decides), at most :data:`MAX_RUNS`. A loss of a millisecond is
    noisy run to run (allocator, page faults, the machine); its median over
    hundreds of runs is not."""
    slowest = max(warmup_ms, default=0.0)
    if min_time <= 0 or slowest <= 0:
        return repeat
    return max(repeat, min(MAX_RUNS, math.ceil(min_time * 1e3 / slowest)))


def run_case(case: Case, size: 'Size', device: torch.device, repeat: int,
             warmup: int, use_mmdet: bool, seed: int = 0,
             min_time: float = 0.0) -> Dict:
    """Measure one case at one size; never raises for a loss's failure."""
    gen = torch.Generator().manual_seed(seed)
    args, shape = case.make_inputs(size, gen)
    args = _to(args, device)
    row = dict(loss=case.key, loss_type=case.loss_type, size=size,
               shape=shape, cfg=copy.deepcopy(case.cfg))
    sides = {}
    modules = {}
    if has_mmloss(case):
        sides['mmloss'] = _side('ok')
        try:
            modules['mmloss'] = build_mmloss(case, device)
        except Exception as exc:  # noqa: BLE001 - reported in the row
            sides['mmloss'] = _side('error', error=f'build: {exc!r}')
    else:
        sides['mmloss'] = _side('missing')
    compare_mmdet = use_mmdet and case.in_mmdet
    if compare_mmdet:
        sides['mmdet'] = _side('ok')
        try:
            modules['mmdet'] = build_mmdet(case, device)
        except Exception as exc:  # noqa: BLE001
            sides['mmdet'] = _side('error', error=f'build: {exc!r}')

    row['agree'] = None
    row['agreement'] = None
    if 'mmloss' in modules and 'mmdet' in modules:
        # Freshly built modules, so stateful losses (GHM momentum, Seesaw
        # class counts) start from the same state on both sides.
        results = {}
        for name, build in (('mmloss', build_mmloss), ('mmdet', build_mmdet)):
            try:
                results[name] = forward_backward(build(case, device), args)
            except Exception as exc:  # noqa: BLE001
                sides[name].update(status='error', error=f'run: {exc!r}')
                del modules[name]
        if len(results) == 2:
            row['agreement'] = agreement(results['mmloss'], results['mmdet'])
            row['agree'] = row['agreement']['agree']

    order = list(modules)
    warmup_ms = {}
    i = 0
    runs = warmup + repeat
    while i < runs:
        # Alternate who goes first so neither always runs on a warm cache.
        for name in (order if i % 2 == 0 else order[::-1]):
            if name not in modules:
                continue
            try:
                ms = time_once(modules[name], args, device)
            except Exception as exc:  # noqa: BLE001
                sides[name].update(status='error', error=f'run: {exc!r}')
                del modules[name]
                continue
            if i >= warmup:
                sides[name]['runs_ms'].append(ms)
            else:
                warmup_ms[name] = ms
        i += 1
        if i == warmup:
            runs = warmup + timed_runs(repeat, min_time, warmup_ms.values())
    for side in sides.values():
        if side['runs_ms']:
            side['ms'] = statistics.median(side['runs_ms'])

    # Memory last: the profiler it runs under must not disturb the timing.
    for name, module in list(modules.items()):
        try:
            sides[name].update(measure_memory(module, args, device))
        except Exception as exc:  # noqa: BLE001
            sides[name].update(status='error', error=f'run: {exc!r}')
            del modules[name]

    row['mmloss'] = sides['mmloss']
    row['mmdet'] = sides.get('mmdet')
    return _with_ratios(row, device)


def _with_ratios(row: Dict, device: torch.device) -> Dict:
    """``row`` with its speed-up, memory ratios and target verdict, from
    its two sides."""
    ours, ref = row['mmloss'], row['mmdet'] or _side('absent')
    row['speedup'] = _safe_ratio(ref['ms'], ours['ms'])
    row['saved_ratio'] = _safe_ratio(ours['saved_bytes'], ref['saved_bytes'])
    row['peak_ratio'] = _safe_ratio(ours['peak_bytes'], ref['peak_bytes'])
    row['target'] = target_verdict(row) if device.type == 'cpu' else None
    return row


def merge_rounds(rows: List[Dict], device: torch.device) -> Dict:
    """One row from the rows of the same case in several rounds: each
    side's timed runs pooled and their median taken, the speed-up of
    those medians (each round's own in ``round_speedups``); memory from
    the first round (it does not vary); a failure in any round fails the
    row."""
    if len(rows) == 1:
        return rows[0]
    merged = copy.deepcopy(rows[0])
    for name in ('mmloss', 'mmdet'):
        sides = [row[name] for row in rows if row.get(name)]
        if not sides:
            continue
        failed = [side for side in sides if side['status'] == 'error']
        if failed:
            merged[name] = copy.deepcopy(failed[0])
            continue
        runs = [ms for side in sides for ms in side['runs_ms']]
        merged[name]['runs_ms'] = runs
        merged[name]['ms'] = statistics.median(runs) if runs else None
    agreements = [row['agree'] for row in rows]
    if False in agreements:
        bad = agreements.index(False)
        merged['agree'], merged['agreement'] = False, rows[bad]['agreement']
    merged['round_speedups'] = [row['speedup'] for row in rows]
    return _with_ratios(merged, device)


def row_failed(row: Dict) -> bool:
    """A failed agreement check or an mmloss loss that raised.

    mmdet raising (say, a CUDA op its mmcv build lacks) is reported in the
    row but is not mmloss's failure.
    """
    return row['agree'] is False or row['mmloss']['status'] == 'error'


# --------------------------------------------------------------------------
# Progress and reports.
# --------------------------------------------------------------------------


class _TextBar:
    """A minimal progress bar on stderr for when tqdm is not installed."""

    def __init__(self, total: int, disable: bool = False):
        self.total, self.done, self.disable = total, 0, disable
        self.text = ''

    def set_description(self, text: str) -> None:
        self.text = text
        self._draw()

    def update(self, n: int = 1) -> None:
        self.done += n
        self._draw()

    def _draw(self) -> None:
        if self.disable:
            return
        width = 30
        filled = width * self.done // max(self.total, 1)
        sys.stderr.write(f'\r[{"#" * filled}{"." * (width - filled)}] '
                         f'{self.done}/{self.total} {self.text:<40}')
        sys.stderr.flush()

    def close(self) -> None:
        if not self.disable:
            sys.stderr.write('\n')
            sys.stderr.flush()


def progress_bar(total: int, disable: bool = False):
    try:
        from tqdm import tqdm
    except ImportError:
        return _TextBar(total, disable)
    return tqdm(total=total, disable=disable, unit='case', file=sys.stderr,
                dynamic_ncols=True)


def _fmt(value, spec: str, missing: str = '-') -> str:
    return missing if value is None else format(value, spec)


def _mb(nbytes) -> Optional[float]:
    return None if nbytes is None else nbytes / MIB


def _agree_cell(row: Dict) -> str:
    if row['mmloss']['status'] == 'missing':
        return 'missing'
    if row['mmloss']['status'] == 'error':
        return 'ERROR'
    if (row['mmdet'] or {}).get('status') == 'error':
        return 'mmdet error'
    if row['agree'] is None:
        return '-'
    return 'ok' if row['agree'] else 'MISMATCH'


COLUMNS = ('loss', 'size', 'shape', 'mmdet ms', 'mmloss ms', 'speed-up',
           'mmdet saved MiB', 'mmloss saved MiB', 'saved ratio',
           'mmdet peak MiB', 'mmloss peak MiB', 'agree', 'target')


def table_rows(rows: List[Dict]) -> List[List[str]]:
    """The report's cells, one list per row, in ``COLUMNS`` order."""
    cells = []
    for row in rows:
        ours, ref = row['mmloss'], row['mmdet'] or {}
        cells.append([
            row['loss'], str(row['size']), row['shape'],
            _fmt(ref.get('ms'), '.2f'), _fmt(ours['ms'], '.2f'),
            _fmt(row['speedup'], '.2f', '-') + ('x' if row['speedup'] else ''),
            _fmt(_mb(ref.get('saved_bytes')), '.1f'),
            _fmt(_mb(ours['saved_bytes']), '.1f'),
            _fmt(row['saved_ratio'], '.2f'),
            _fmt(_mb(ref.get('peak_bytes')), '.1f'),
            _fmt(_mb(ours['peak_bytes']), '.1f'),
            _agree_cell(row), row['target'] or '-'])
    return cells


def format_text_table(rows: List[Dict]) -> str:
    cells = [list(COLUMNS)] + table_rows(rows)
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = ['  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
             for r in cells]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return '\n'.join(lines)


def format_markdown(rows: List[Dict], meta: Dict) -> str:
    header = '| ' + ' | '.join(COLUMNS) + ' |'
    numeric = range(3, len(COLUMNS) - 2)
    align = '|' + '|'.join('---:' if i in numeric else '---'
                           for i in range(len(COLUMNS))) + '|'
    body = ['| ' + ' | '.join(r) + ' |' for r in table_rows(rows)]
    peak_methods = sorted({s['peak_method'] for r in rows
                           for s in (r['mmloss'], r['mmdet'] or {})
                           if s.get('peak_method')})
    lines = [
        '# mmloss vs MMDetection: forward + backward',
        '',
        f'{meta["date"]} · device `{meta["device_name"]}` · '
        f'{meta["threads"]} thread(s) · median of {meta["repeat"]} runs or '
        f'more (fast losses: ~{meta.get("min_time", 0)} s per side) '
        f'after {meta["warmup"]} warm-up, in each of '
        f'{meta.get("rounds", 1)} round(s)'
        f'{" (each loss in its own process)" if meta.get("isolate") else ""}'
        f' · torch {meta["torch"]} · '
        f'mmdet {meta["mmdet"] or "not installed"} · mmloss {meta["mmloss"]}',
        '',
        header, align, *body,
        '',
        '*ms*: median wall time of forward + backward. *speed-up*: mmdet ms '
        '/ mmloss ms. *saved MiB*: the distinct storages the graph keeps '
        'alive for backward, inputs included (the JSON also has '
        '`saved_tensor_bytes`, every saved tensor counted, repeats '
        'included). *saved ratio*: mmloss / mmdet. *peak MiB*: '
        'highest memory allocated above the start during forward + '
        f'backward ({", ".join(peak_methods) or "n/a"}). *agree*: loss '
        f'value and input gradient within rtol {RTOL:g}. *target*: the '
        'issue\'s goal at the large size on CPU (FocalLoss ≥ 3x and ≤ 0.25 '
        'of the saved bytes, GHMC ≥ 8x, every other twin ≥ 1.5x; never '
        'more saved or peak memory, up to 1% or 64 KiB counting as equal; '
        'at the small size, about 1k rows: never slower than mmdet, within '
        f'{SMALL_SPEED_NOISE:.0%} timing noise).',
        '',
    ]
    return '\n'.join(lines)


README_START = '<!-- benchmark:start -->'
README_END = '<!-- benchmark:end -->'


def readme_block(rows: List[Dict], meta: Dict) -> str:
    """The README's table: the large-size rows (all rows if none is large)
    under one line naming the run."""
    shown = [r for r in rows if r['size'] == 'large'] or rows
    header = '| ' + ' | '.join(COLUMNS) + ' |'
    numeric = range(3, len(COLUMNS) - 2)
    align = '|' + '|'.join('---:' if i in numeric else '---'
                           for i in range(len(COLUMNS))) + '|'
    body = ['| ' + ' | '.join(r) + ' |' for r in table_rows(shown)]
    run = (f'Run {meta["date"]} on {meta["device"]} (`{meta["device_name"]}`'
           f', {meta["threads"]} thread(s)), torch {meta["torch"]}, mmdet '
           f'{meta["mmdet"] or "not installed"}, '
           f'{meta.get("rounds", 1)} round(s)'
           f'{", each loss in its own process" if meta.get("isolate") else ""}'
           f'.')
    return '\n'.join([run, '', header, align, *body])


def update_readme(path: str, rows: List[Dict], meta: Dict) -> None:
    """Replace the text between the benchmark markers of ``path``."""
    with open(path) as f:
        text = f.read()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f'{path} has no {README_START} ... {README_END} '
                         f'block')
    text = (text[:start + len(README_START)] + '\n'
            + readme_block(rows, meta) + '\n' + text[end:])
    with open(path, 'w') as f:
        f.write(text)


def collect_meta(args, device: torch.device) -> Dict:
    try:
        import mmdet
        mmdet_version = mmdet.__version__
    except ImportError:
        mmdet_version = None
    import mmloss
    if device.type == 'cuda':
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
        try:
            with open('/proc/cpuinfo') as info:
                for line in info:
                    if line.startswith('model name'):
                        device_name = line.split(':', 1)[1].strip()
                        break
        except OSError:
            pass
    return dict(
        date=datetime.datetime.now().isoformat(timespec='seconds'),
        device=device.type, device_name=device_name,
        threads=torch.get_num_threads(), repeat=args.repeat,
        min_time=args.min_time, warmup=args.warmup, sizes=list(args.sizes),
        rounds=args.rounds,
        isolate=bool(getattr(args, 'isolate', False)),
        torch=torch.__version__,
        mmdet=mmdet_version, mmloss=mmloss.__version__,
        python=platform.python_version(), rtol=RTOL)


def write_results(rows: List[Dict], meta: Dict, out_dir: str) -> Tuple[str,
                                                                      str]:
    """Write ``benchmark.json`` and ``benchmark.md``; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, 'benchmark.json')
    md_path = os.path.join(out_dir, 'benchmark.md')
    with open(json_path, 'w') as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=2,
                  default=lambda o: repr(o))
        f.write('\n')
    with open(md_path, 'w') as f:
        f.write(format_markdown(rows, meta))
    return json_path, md_path


def isolated_command(case: Case, sizes: Sequence['Size'],
                     args: argparse.Namespace, use_mmdet: bool,
                     out_dir: str) -> List[str]:
    """The command line that measures one case at ``sizes`` in a process of
    its own, with this run's settings, writing its JSON to ``out_dir``."""
    command = [sys.executable, os.path.abspath(__file__), '--losses',
               case.key, '--out', out_dir, '--no-progress',
               '--threads', str(args.threads), '--repeat', str(args.repeat),
               '--warmup', str(args.warmup), '--min-time',
               str(args.min_time), '--device', args.device, '--seed',
               str(args.seed)]
    named = [size for size in sizes if isinstance(size, str)]
    rows = [str(size) for size in sizes if not isinstance(size, str)]
    command += ['--size', 'both' if len(named) > 1 else
                named[0] if named else 'none']
    if rows:
        command += ['--rows'] + rows
    if not use_mmdet:
        command.append('--no-mmdet')
    return command


def run_case_isolated(case: Case, sizes: Sequence['Size'],
                      args: argparse.Namespace, use_mmdet: bool
                      ) -> List[Dict]:
    """:func:`run_case` at each of ``sizes`` in one fresh process (see
    ``--isolate``); a size the process wrote no row for gets an error
    row."""
    with tempfile.TemporaryDirectory(prefix='mmloss-bench-') as out_dir:
        done = subprocess.run(
            isolated_command(case, sizes, args, use_mmdet, out_dir),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        path = os.path.join(out_dir, 'benchmark.json')
        found = []
        if os.path.exists(path):
            with open(path) as f:
                found = json.load(f)['rows']
    rows = []
    for size in sizes:
        match = [row for row in found
                 if row['loss'] == case.key and row['size'] == size]
        if match:
            rows.append(match[0])
            continue
        failed = _side('error')
        failed['error'] = (f'isolated run (exit {done.returncode}): '
                           f'{done.stderr.strip()[-500:]}')
        row = dict(loss=case.key, loss_type=case.loss_type, size=size,
                   shape='-', cfg=copy.deepcopy(case.cfg), agree=None,
                   agreement=None, mmdet=None, mmloss=failed)
        rows.append(_with_ratios(row, torch.device(args.device)))
    return rows


# --------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Time and measure mmloss losses against mmdet\'s.')
    parser.add_argument('--losses', nargs='+', metavar='NAME',
                        help='losses to run (row or class name; default all)')
    parser.add_argument('--size', choices=('small', 'large', 'both', 'none'),
                        default='both',
                        help='input sizes (default both; none: only --rows)')
    parser.add_argument('--rows', type=int, nargs='+', metavar='N',
                        default=(),
                        help='also run each loss at these row counts '
                        '(anchors, boxes, RoIs, mask queries, heatmap '
                        'rows), e.g. --rows 512 1024 8192')
    parser.add_argument('--threads', type=int, default=2,
                        help='torch CPU threads (default 2)')
    parser.add_argument('--repeat', type=int, default=7,
                        help='timed runs per loss; the median is reported')
    parser.add_argument('--warmup', type=int, default=2,
                        help='untimed runs first')
    parser.add_argument('--min-time', type=float, default=0.5,
                        metavar='SECONDS',
                        help='fast losses get more timed runs, up to about '
                        'this much time per side (default 0.5; 0 = exactly '
                        '--repeat runs)')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu')
    parser.add_argument('--out', default='benchmark_results',
                        help='folder for benchmark.json and benchmark.md')
    parser.add_argument('--no-mmdet', action='store_true',
                        help='benchmark mmloss alone even if mmdet is here')
    parser.add_argument('--check-targets', action='store_true',
                        help='also exit 1 when an issue target is missed')
    parser.add_argument('--readme', metavar='PATH',
                        help='also write the table (large sizes) between '
                        'the benchmark markers of this README')
    parser.add_argument('--rounds', type=int, default=1,
                        help='run every loss this many times, round after '
                        'round, and report the median over all their '
                        'timed runs (the rounds spread a loss\'s runs over '
                        'the whole benchmark, so drift of the machine and '
                        'of the allocator\'s state evens out; default 1)')
    parser.add_argument('--isolate', action='store_true',
                        help='measure each loss in a fresh Python process '
                        '(both sides still in one process): a result no '
                        'longer depends on which losses ran before it and '
                        'left the allocator in what state')
    parser.add_argument('--no-progress', action='store_true')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0 or args.threads < 1 or \
            args.min_time < 0 or args.rounds < 1:
        parser.error('--repeat, --threads and --rounds must be >= 1, '
                     '--warmup and --min-time >= 0')
    try:
        args.cases = select_cases(args.losses)
    except ValueError as exc:
        parser.error(str(exc))
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: CUDA is not available here')
    if any(rows < 1 for rows in args.rows):
        parser.error('--rows must be >= 1')
    named = SIZES if args.size == 'both' else () if args.size == 'none' \
        else (args.size, )
    if not named and not args.rows:
        parser.error('--size none needs --rows')
    args.sizes = tuple(named) + tuple(args.rows)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        mmloss_registry()
    except Exception as exc:  # noqa: BLE001 - a broken package: say so
        print(f'cannot import mmloss: {exc!r}', file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    use_mmdet = not args.no_mmdet and mmdet_registry() is not None
    if not use_mmdet and not args.no_mmdet:
        print('mmdet is not installed: benchmarking mmloss alone',
              file=sys.stderr)
    meta = collect_meta(args, device)
    uncovered = sorted(set(mmloss_registry().module_dict)
                       - {case.loss_type for case in CASES})
    if uncovered:
        print(f'note: no benchmark case for {", ".join(uncovered)}',
              file=sys.stderr)
    jobs = [(case, size) for case in args.cases for size in args.sizes]
    bar = progress_bar(len(jobs) * args.rounds, disable=args.no_progress)
    rounds = [[] for _ in jobs]
    for _ in range(args.rounds):
        if args.isolate:  # one process per loss, all its sizes
            for index, case in enumerate(args.cases):
                bar.set_description(f'{case.key} (own process)')
                rows = run_case_isolated(case, args.sizes, args, use_mmdet)
                for offset, row in enumerate(rows):
                    rounds[index * len(args.sizes) + offset].append(row)
                bar.update(len(args.sizes))
            continue
        for (case, size), done in zip(jobs, rounds):
            bar.set_description(f'{case.key} ({size})')
            gc.collect()
            done.append(run_case(case, size, device, args.repeat,
                                 args.warmup, use_mmdet, args.seed,
                                 args.min_time))
            bar.update(1)
    bar.close()
    rows = [merge_rounds(done, device) for done in rounds]

    print(format_text_table(rows))
    json_path, md_path = write_results(rows, meta, args.out)
    print(f'\nwrote {json_path} and {md_path}')
    if args.readme:
        update_readme(args.readme, rows, meta)
        print(f'updated the benchmark table of {args.readme}')
    status = 0
    for row in rows:
        if row_failed(row):
            detail = row['agreement'] or {}
            errors = [s['error'] for s in (row['mmloss'], row['mmdet'] or {})
                      if s.get('error')]
            print(f'FAILED {row["loss"]} ({row["size"]}): '
                  f'{"; ".join(errors) or detail}', file=sys.stderr)
            status = 1
        elif args.check_targets and (row['target'] or '').startswith(
                'missed'):
            print(f'TARGET {row["loss"]} ({row["size"]}): {row["target"]}',
                  file=sys.stderr)
            status = 1
    return status


if __name__ == '__main__':
    sys.exit(main())
