"""Which path a loss call runs: the plain formula or a fast path.

Every loss has one reference, its *plain* formula written in ordinary
autograd ops. A *fast path* is an optional execution of the same maths (a
kernel that computes the value and its gradient together, the row-wise
Jacobian engine of the box losses, a CPU-only variant, a compiled kernel).
This module is the one place that decides, per call, which one runs:

* the global switch: :func:`fast_paths` (a function and a context manager)
  or the environment variable ``MMLOSS_FAST_PATHS=0`` force the plain
  formula everywhere;
* the per-device tuning table :data:`TUNING`: block rows of the row-wise
  engine, the smallest inputs worth a fast path, and whether the
  CPU-specific kernels (data-dependent shapes, flat in-place updates) may
  run on that device;
* the call itself: dtypes, grad mode and size (:func:`use_fast`).

Autocast never reaches a kernel: the public functions run their body with
autocast disabled (:func:`autocast_off`) on inputs upcast to float32 at
least, so a matmul-listed op could not lower coordinates, logits or
gradients even if a kernel used one (none does).

Tests force another device's table on CPU tensors with
:func:`pretend_device`, so the branches taken only off the CPU run in the
CPU test suite too; the differential harness (``tests/test_paths.py``)
enumerates :data:`TUNING` and :data:`PATHS` and fails for a threshold or a
path it does not cover.
"""
import contextlib
import os
import threading
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, Mapping, Optional

import torch
from torch import Tensor

__all__ = [
    'FAST_PATHS_ENV', 'COMPILE_ENV', 'PATHS', 'Tuning', 'TUNING',
    'fast_paths', 'fast_paths_enabled', 'compile_enabled', 'EnvFlag',
    'env_flag',
    'environment_value', 'tuning',
    'device_kind', 'cpu_kernels', 'use_fast',
    'sum_of_products',
    'pretend_device',
    'autocast_off', 'without_autocast', 'block_rows'
]

#: ``MMLOSS_FAST_PATHS=0`` forces the plain formula everywhere.
FAST_PATHS_ENV = 'MMLOSS_FAST_PATHS'
#: ``MMLOSS_COMPILE=1`` lets kernels that have one run compiled.
COMPILE_ENV = 'MMLOSS_COMPILE'

#: Every kind of path a call can take (the harness checks it covers each).
PATHS = (
    'plain',      # the reference formula, ordinary autograd
    'fast',       # a kernel: value and gradient in one pass
    'fused',      # the kernel with the weighted mean/sum inside it
    'cpu',        # a CPU-only variant of a kernel (cpu_kernels=True)
    'blocked',    # the row-wise engine over several blocks
    'compiled',   # a kernel compiled by torch.compile (MMLOSS_COMPILE=1)
)

_FALSE = ('0', 'false', 'no', 'off')
_TRUE = ('1', 'true', 'yes', 'on')


@dataclass(frozen=True)
class Tuning:
    """The tuning values of one device kind.

    Attributes:
        block_rows (int): rows per block of the row-wise Jacobian engine
            (:mod:`mmloss.engine.rowwise`): big enough that op overheads
            stay small and elementwise kernels still split over threads,
            small enough that a core's per-box temporaries stay far below
            the full-size tensors.
        wide_block_rows (int): the same, for the cores that have room for
            twice the rows (IoU, GIoU, DIoU, CIoU).
        entries_per_block_row (int): the classification kernels' row
            blocks (focal, softmax CE, KD, Dice;
            :func:`mmloss.losses.focal_kernels.row_blocks`) hold
            ``block_rows * entries_per_block_row`` entries (rows x
            classes): a multiplier, not a size threshold (the harness runs
            both sides of the block boundary it gives on every device
            kind).
        loss_entries_per_block_row (Mapping[str, int]): per loss, its own
            ``entries_per_block_row`` (the others use the default; a
            multiplier too, run on both sides of its block boundary by the
            harness).
        cpu_kernels (bool): whether the CPU-specific kernel variants run
            (data-dependent shapes, flat in-place updates): fast on the
            CPU, a host sync on an accelerator.
        min_rows (Mapping[str, int]): per loss, the fewest rows for which
            the fast path beats the plain formula (per-call overhead wins
            below); losses not listed take the fast path from 1 row.
        min_elements (Mapping[str, int]): the same in input elements, for
            losses whose cross-over depends on the rows' length too (Dice:
            masks x points).
        dot_block_elements (int): where positive, a kernel's sum of
            products ``sum(x * y)`` (:func:`sum_of_products`) runs as BLAS
            dots over blocks of at most this many elements, their results
            summed by torch's pairwise sum: no buffer of the product (one
            pass reading both tensors), and each dot's sequential float
            accumulation stays bounded (one dot over millions of numbers
            drifts by 1e-6 and more). 0: ``(x * y).sum()``. A block size,
            not a threshold (the harness runs both sides of its boundary on
            every device kind).
        mean_by_sum_elements (int): a ``'mean'`` without ``avg_factor``
            (:meth:`~mmloss.reduction.Reduction.apply`) over at least this
            many float32/float64 losses runs as ``loss.sum() / count``,
            whose backward divides the scalar gradient and expands it as a
            view; over fewer, as ``loss.mean()``, one op fewer each way
            (the same value), whose backward writes a buffer of the
            loss's size. 0: always the sum. A threshold in elements (the
            harness runs both sides of it on every device kind).
        plain_unweighted (frozenset): losses whose plain formula without
            ``weight`` or ``avg_factor`` (torch's own loss where torch has
            it, reduced by torch; :meth:`~mmloss.reduction.Reduction.
            torch_reduction`) beats their fast path at every size: such
            calls take the plain formula (a weighted call still follows
            ``min_rows``). Not a threshold: the harness runs both sides
            (weighted and unweighted settings) on every device kind.
    """
    block_rows: int = 32768
    wide_block_rows: int = 65536
    entries_per_block_row: int = 64
    loss_entries_per_block_row: Mapping[str, int] = field(
        default_factory=dict)
    cpu_kernels: bool = False
    min_rows: Mapping[str, int] = field(default_factory=dict)
    min_elements: Mapping[str, int] = field(default_factory=dict)
    dot_block_elements: int = 0
    mean_by_sum_elements: int = 0
    plain_unweighted: frozenset = frozenset()


#: Per device kind (``tensor.device.type``); unknown kinds use ``'default'``.
TUNING: Dict[str, Tuning] = {
    # below these rows the plain formulas' fused ATen kernels beat the fast
    # paths on the CPU (F.cross_entropy for the softmax CE at any class
    # count, F.log_softmax for DFL; the sigmoid CE's fast path wins from
    # about a thousand rows of 80 classes)
    # classification blocks of 512k entries (2 MiB of float32) keep the
    # focal kernel's chain of element-wise passes in the caches: about a
    # fifth faster than 2M-entry blocks on 100000 x 80 logits (the softmax
    # and KD kernels were indifferent)
    # Dice's blocks hold half as many: its forward reads a block of the
    # probabilities and targets twice and writes a scratch, which at 256k
    # entries per block fit each core's 2 MiB L2 (200 x 12544 masks: 5.0
    # to 5.5 ms against 5.5 to 6.0 at 512k; the focal kernel was slower
    # at 256k: 57 ms against 46)
    'cpu': Tuning(block_rows=32768, wide_block_rows=65536,
                  entries_per_block_row=16,
                  loss_entries_per_block_row={'DiceLoss': 8},
                  cpu_kernels=True,
                  min_rows={'CrossEntropyLoss': 32768,
                            'CrossEntropyLoss(sigmoid)': 1024,
                            'DistributionFocalLoss': 32768,
                            # the plain formula's few ops cost less than the
                            # kernel's blocks and Function call up to ~2k
                            # rows of 80 classes (measured: 1000 x 80 plain
                            # 0.69 ms, kernel 0.81 ms; 2500 x 80 kernel 1.5x)
                            'FocalLoss': 2048,
                            'Poly1FocalLoss': 2048,
                            # one exponential per logit pays for the
                            # Function call from about a thousand rows of 17
                            # (measured: kernel 1.02x and 1.09x of mmdet at
                            # 1000 and 2048 rows, plain 0.97x and 0.98x)
                            'KnowledgeDistillationKLDivLoss': 1024,
                            # IoU and GIoU: below about a thousand boxes
                            # the per-op costs of the row-wise engine's
                            # blocks and Function outweigh its fewer passes
                            # (1000 boxes, tools/benchmark.py's inputs:
                            # IoU plain 0.47 vs kernel 0.52 ms, GIoU 0.57 vs
                            # 0.59; at 2000 the kernel wins)
                            'IoULoss': 1024,
                            'GIoULoss': 1024,
                            # element-wise box losses: below these rows the
                            # plain formula (F.mse_loss, F.smooth_l1_loss,
                            # sub + abs) costs less than the Function call
                            'L1Loss': 65536,
                            'MSELoss': 65536,
                            'SmoothL1Loss': 131072},
                  # Dice: counted in mask elements (N x D), not rows
                  min_elements={'DiceLoss': 16384},
                  # dots over at most 256k numbers (1 MiB of float32):
                  # as exact as torch's pairwise sum there (float32 sums
                  # of squares off by up to 7e-8 relative, both); one dot
                  # over 1M numbers drifts to 1e-6, over 40M to 1e-4.
                  # (200000 x 4 MSE, in one process: blocks of 1M 8%
                  # faster than of 256k, of 128k 3% slower.)
                  dot_block_elements=262144,
                  # mean() then costs one op less each way than sum() /
                  # count (forward and backward of a float32 loss, 2
                  # threads: 1000 losses 21.9 against 24.6 us, 4096 23.5
                  # against 24.6, 8192 25.8 against 25.1, 32768 43 against
                  # 30: mean's backward writes the buffer)
                  mean_by_sum_elements=4096,
                  # unweighted, torch's fused F.smooth_l1_loss (one pass
                  # each way, reading pred and target) beats the kernel at
                  # every size (200000 x 4, mean: 0.68 vs 1.05 ms);
                  # weighted, the kernels win. MSE's kernel makes one fresh
                  # buffer (the difference, which becomes the gradient; its
                  # squares are summed by a dot) to F.mse_loss's two (the
                  # squares and the gradient): 200000 x 4, mean, 0.54 ms
                  # against 0.64-0.69. L1 has no fused torch loss:
                  # its plain sub, abs and sum make two fresh buffers more
                  # than the kernel, which came out 4% slower on one
                  # machine (AMD EPYC: 0.94 vs 0.88 ms) and 9% faster on
                  # another (Intel Xeon, tools/benchmark.py: 0.92-0.97 vs
                  # 1.03-1.12 ms), so L1 keeps its kernel
                  plain_unweighted=frozenset({'SmoothL1Loss'})),
    # accelerators: blocks only bound the temporaries' memory; the softmax
    # CE's many small kernels lose to F.cross_entropy's few below this
    'cuda': Tuning(block_rows=131072, wide_block_rows=131072,
                   cpu_kernels=False, min_rows={'CrossEntropyLoss': 32768}),
    'default': Tuning(block_rows=131072, wide_block_rows=131072,
                      cpu_kernels=False),
}


class _State(threading.local):
    """Per-thread state: the device kind :func:`pretend_device` set."""
    device: Optional[str] = None


_state = _State()


_ENCODED_NAMES: Dict[str, object] = {}


def _raw_environment_value(name: str):
    """The environment's stored value of ``name`` as it is held (the same
    object until the variable is set again), or ``None``; ``os.environ``
    without the ``KeyError`` it raises and catches for an unset name."""
    data = getattr(os.environ, '_data', None)
    encode = getattr(os.environ, 'encodekey', None)
    if data is None or encode is None:
        return os.environ.get(name)
    key = _ENCODED_NAMES.get(name)
    if key is None:
        key = _ENCODED_NAMES[name] = encode(name)
    return data.get(key)


def environment_value(name: str) -> Optional[str]:
    """``os.environ.get(name)``, cheaply (this runs on every loss call)."""
    value = _raw_environment_value(name)
    if value is None or isinstance(value, str):
        return value
    return os.environ.decodevalue(value)


_UNREAD = object()


class EnvFlag:
    """A boolean environment variable (``1/true/yes/on``,
    ``0/false/no/off``, any case and spacing; ``default`` when unset or
    anything else), read on every call but parsed only when its value
    changed: the stored value is the same object until the variable is set
    again (and this holds it, so its identity cannot be reused).

    :meth:`get` is the call for every loss call: one dict lookup in
    ``os.environ``'s own dict of encoded names and values (looked up each
    time: a test may replace ``os.environ``) while the value is unchanged;
    :meth:`current` does the rest. ``forced`` (``None``: unset) overrides
    the environment (what :class:`fast_paths` and
    :func:`mmloss.set_check_finite` set), so a hot caller asks the flag
    once, with one call.
    """
    __slots__ = ('name', 'default', 'key', 'raw', 'value', 'forced')

    def __init__(self, name: str, default: bool):
        self.name = name
        self.default = default
        encode = getattr(os.environ, 'encodekey', None)
        self.key = _UNREAD if encode is None else encode(name)
        self.raw = _UNREAD
        self.value = default
        self.forced: Optional[bool] = None

    def get(self) -> bool:
        """The flag's value now (``forced`` if set), cheaply while it is
        unchanged."""
        forced = self.forced
        if forced is not None:
            return forced
        data = getattr(os.environ, '_data', None)
        if data is not None and data.get(self.key) is self.raw:
            return self.value
        return self.current()

    def current(self) -> bool:
        """The flag's value now."""
        raw = _raw_environment_value(self.name)
        if raw is self.raw:
            return self.value
        text = '' if raw is None else (
            raw if isinstance(raw, str) else os.environ.decodevalue(raw))
        text = text.strip().lower()
        self.value = False if text in _FALSE else True if text in _TRUE \
            else self.default
        self.raw = raw
        return self.value


_FLAGS: Dict[tuple, EnvFlag] = {}


def env_flag(name: str, default: bool) -> bool:
    """The boolean environment variable ``name`` (see :class:`EnvFlag`)."""
    flag = _FLAGS.get((name, default))
    if flag is None:
        flag = _FLAGS[(name, default)] = EnvFlag(name, default)
    return flag.get()


#: The global fast-path switch: ``forced`` by :class:`fast_paths`, else the
#: environment.
_FAST_PATHS_FLAG = EnvFlag(FAST_PATHS_ENV, True)


def fast_paths_enabled() -> bool:
    """Whether fast paths may run (``fast_paths`` or ``MMLOSS_FAST_PATHS``).
    """
    return _FAST_PATHS_FLAG.get()


class fast_paths:
    """Allow or forbid every fast path.

    ``mmloss.fast_paths(False)`` forbids them from now on (the plain
    formula runs everywhere); ``mmloss.fast_paths(None)`` defers to the
    environment variable ``MMLOSS_FAST_PATHS`` again. Used as a context
    manager (or decorator) it restores the previous setting on exit::

        with mmloss.fast_paths(False):
            reference = loss(pred, target)
    """

    def __init__(self, enabled: Optional[bool] = True):
        if enabled is not None and not isinstance(enabled, bool):
            raise TypeError(f'fast_paths: enabled must be True, False or '
                            f'None, but got {enabled!r}')
        self._previous = _FAST_PATHS_FLAG.forced
        _FAST_PATHS_FLAG.forced = enabled

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _FAST_PATHS_FLAG.forced = self._previous
        return False


def compile_enabled() -> bool:
    """Whether ``MMLOSS_COMPILE=1`` asks for compiled kernels."""
    return env_flag(COMPILE_ENV, False)


def device_kind(tensor: Tensor) -> str:
    """``tensor``'s device type, or the kind :func:`pretend_device` set."""
    pretended = _state.device
    if pretended is not None:
        return pretended
    return 'cpu' if tensor.is_cpu else tensor.device.type


def tuning(tensor: Tensor) -> Tuning:
    """The :data:`TUNING` entry for ``tensor``'s device kind."""
    # device_kind inlined: this runs on every loss call
    kind = _state.device
    if kind is None:
        kind = 'cpu' if tensor.is_cpu else tensor.device.type
    return TUNING.get(kind) or TUNING['default']


def cpu_kernels(tensor: Tensor) -> bool:
    """Whether the CPU-specific kernel variants may run for ``tensor``."""
    return tuning(tensor).cpu_kernels and _FAST_PATHS_FLAG.get()


def block_rows(tensor: Tensor, wide: bool = False) -> int:
    """Rows per block of the row-wise engine on ``tensor``'s device."""
    entry = tuning(tensor)
    return entry.wide_block_rows if wide else entry.block_rows


def use_fast(loss_name: str, *tensors: Optional[Tensor],
             rows: Optional[int] = None,
             elements: Optional[int] = None,
             unweighted: bool = False) -> bool:
    """Whether this call of ``loss_name`` takes its fast path.

    False when fast paths are switched off, when a tensor is neither
    float32 nor float64 nor half (integer logits take the plain path and
    its errors), or when ``rows`` (``elements``) is below the device's
    ``min_rows`` (``min_elements``) for the loss, or, for an
    ``unweighted`` call (no ``weight``, no ``avg_factor``: the caller
    says), when the device lists the loss in ``plain_unweighted``.
    Families add their own conditions (a target that needs a gradient the
    kernel does not give, for example) before asking.
    """
    for first in tensors:
        if first is not None:
            break
    else:
        return False
    # the size thresholds first: below them (every call of a RoI head)
    # the switch need not be read
    entry = tuning(first)
    if rows is not None:
        if rows < entry.min_rows.get(loss_name, 0):
            return False
    if elements is not None:
        if elements < entry.min_elements.get(loss_name, 0):
            return False
    if unweighted and loss_name in entry.plain_unweighted:
        return False
    return _FAST_PATHS_FLAG.get()


def sum_of_products(x: Tensor, y: Tensor) -> Tensor:
    """``sum(x * y)`` of two tensors of one shape, a 0-dim tensor.

    Where the device's :attr:`Tuning.dot_block_elements` is positive and
    both are contiguous float32/float64 tensors of one dtype: BLAS dots over
    blocks of at most that many elements, their results summed by torch's
    pairwise sum (one reading pass, no buffer of the product). Elsewhere
    ``(x * y).sum()``. For kernels (autocast is off there; a dot is no
    matmul: neither autocast nor TF32 lowers it).
    """
    block = tuning(x).dot_block_elements
    if block <= 0 or x.dtype is not y.dtype or x.dtype not in (
            torch.float32, torch.float64) or not (
            x.is_contiguous() and y.is_contiguous()):
        return (x * y).sum()
    flat_x, flat_y = x.view(-1), y.view(-1)
    count = flat_x.numel()
    if count <= block:
        return torch.dot(flat_x, flat_y)
    blocks_x = flat_x.split(block)
    blocks_y = blocks_x if y is x else flat_y.split(block)
    return torch.stack([torch.dot(a, b)
                        for a, b in zip(blocks_x, blocks_y)]).sum()


@contextlib.contextmanager
def pretend_device(kind: str) -> Iterator[None]:
    """Use the :data:`TUNING` entry of ``kind`` whatever the tensors' device.

    For tests: ``with pretend_device('cuda'):`` runs, on CPU tensors, the
    branches a CUDA device would take.
    """
    previous = _state.device
    _state.device = kind
    try:
        yield
    finally:
        _state.device = previous


# a question torch answers without a device argument, and the no-op
# context (reusable) returned whenever autocast is off everywhere
_any_autocast_enabled = getattr(torch._C, '_is_any_autocast_enabled', None)


_NO_CONTEXT = contextlib.nullcontext()


def autocast_off(tensor: Tensor):
    """A context with autocast disabled on ``tensor``'s device when it is
    enabled there, else a no-op context (entering costs nothing)."""
    if _any_autocast_enabled is not None and not _any_autocast_enabled():
        return _NO_CONTEXT
    kind = 'cpu' if tensor.is_cpu else tensor.device.type
    try:
        enabled = torch.is_autocast_enabled(kind)
    except TypeError:  # older torch: no device argument
        enabled = torch.is_autocast_enabled() if kind == 'cuda' else \
            torch.is_autocast_cpu_enabled()
    if enabled:
        return torch.autocast(device_type=kind, enabled=False)
    return contextlib.nullcontext()


def without_autocast(tensor: Tensor, function: Callable, *args):
    """``function(*args)`` with autocast disabled on ``tensor``'s device
    (:func:`autocast_off`). While autocast is off everywhere (torch's own
    builtin test says so) no context is entered at all: this runs on every
    loss call, and entering even a no-op context costs two Python calls."""
    if _any_autocast_enabled is not None and not _any_autocast_enabled():
        return function(*args)
    with autocast_off(tensor):
        return function(*args)
