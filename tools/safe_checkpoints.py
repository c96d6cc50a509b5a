"""Load MMEngine checkpoints without letting them run code.

A ``.pth`` file is a pickle. Full unpickling calls whatever functions the
file names, so a crafted checkpoint runs arbitrary code as the user. torch's
weights-only unpickler (the default of ``torch.load`` since torch 2.6) only
rebuilds tensors and containers, plus the globals put on an allow-list.

mmengine 0.10 calls ``torch.load`` without ``weights_only`` and stores
beside the weights its ``MessageHub`` logs: ``HistoryBuffer`` objects holding
numpy arrays and scalars, and the buffers' statistics methods pickled as
``getattr(HistoryBuffer, 'mean')``. :func:`checkpoint_loading` allows exactly
those, for the loads made inside it (``runner.train()`` / ``runner.test()``
of tools/train.py and tools/test.py), so resuming and testing work while a
checkpoint that names anything else is refused with
:class:`UntrustedCheckpointError`. ``--trust-checkpoint`` (``trust=True``)
restores full unpickling inside the block, after a warning.

The allow-list was taken from ``torch.serialization.
get_unsafe_globals_in_checkpoint`` on the checkpoints tools/train.py writes
for the shipped configs (``epoch_N.pth`` of epoch-based runs with
validation, ``iter_N.pth`` of iteration-based ones).
"""
import contextlib
import os
import pickle
import sys

import torch

TRUST_FLAG = '--trust-checkpoint'
# Set in the environment, torch unpickles everything: only under trust.
FULL_UNPICKLING_ENV = 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'
# The statistics methods HistoryBuffer pickles as getattr(HistoryBuffer, m).
HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')


class UntrustedCheckpointError(RuntimeError):
    """A checkpoint needs more than weights-only unpickling allows."""

    def __init__(self, filename, reason):
        self.filename = filename
        super().__init__(
            f'refusing to load checkpoint {filename}: it holds objects that '
            f'weights-only loading does not allow, and unpickling them could '
            f'run code from the file ({reason}). If you made this file '
            f'yourself or trust where it came from, rerun with '
            f'{TRUST_FLAG}.')


def history_buffer_method(owner, name):
    """``getattr`` as the unpickler may call it: HistoryBuffer methods only.

    A checkpoint may name ``builtins.getattr``; allowing the real one would
    let a crafted file walk from any allowed class to arbitrary code
    (``__init__.__globals__`` ...), so this stand-in resolves only the
    statistics methods ``HistoryBuffer`` pickles.
    """
    from mmengine.logging import HistoryBuffer
    if owner is HistoryBuffer and name in HISTORY_BUFFER_METHODS:
        return getattr(owner, name)
    raise pickle.UnpicklingError(
        f'getattr({owner!r}, {name!r}) is not allowed: only '
        f'HistoryBuffer.{{{", ".join(HISTORY_BUFFER_METHODS)}}}')


def mmengine_checkpoint_globals():
    """The allow-list for ``torch.serialization.safe_globals``.

    Plain objects are allowed under their own ``module.qualname``; tuples
    ``(object, name)`` are allowed under ``name``, which covers the numpy 1
    spellings (``numpy.core.multiarray``) of checkpoints written with numpy
    1 and the restricted ``getattr``.
    """
    import numpy as np
    from mmengine.logging import HistoryBuffer

    multiarray = np.ndarray.__reduce__(np.zeros(1))[0].__module__
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed = [HistoryBuffer, np.ndarray, np.dtype,
               (history_buffer_method, 'builtins.getattr')]
    for name in ('numpy.core.multiarray', 'numpy._core.multiarray',
                 multiarray):
        allowed += [(reconstruct, f'{name}._reconstruct'),
                    (scalar, f'{name}.scalar')]
    # numpy >= 1.25 may pickle a dtype through its class.
    for dtype in (np.float64, np.float32, np.float16, np.int64, np.int32,
                  np.int16, np.int8, np.uint8, np.bool_):
        allowed.append(type(np.dtype(dtype)))
    return allowed


def _refuse_with_name(load):
    """Wrap a ``(filename, ...)`` loader: unpickling errors name the file."""

    def checked(filename, *args, **kwargs):
        try:
            return load(filename, *args, **kwargs)
        except pickle.UnpicklingError as exc:
            reason = str(exc).strip().splitlines()
            raise UntrustedCheckpointError(
                filename, _short_reason(reason)) from exc

    return checked


def _short_reason(lines):
    """The part of torch's long message that says what was refused."""
    marker = 'WeightsUnpickler error:'
    for line in lines:
        line = line.strip()
        if marker in line:
            line = line.split(marker, 1)[1].strip()
        if line.startswith(('Unsupported global', 'Trying to',
                            'Can only create', 'getattr(')):
            return line.split('. Please use')[0].rstrip('.')
    return lines[0] if lines else 'weights-only unpickling failed'


@contextlib.contextmanager
def _env(name, value):
    """Set (``value`` str) or unset (``None``) an environment variable."""
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@contextlib.contextmanager
def checkpoint_loading(trust=False, stream=None):
    """Every mmengine checkpoint load inside the block is weights-only.

    Covers ``load_from``, ``resume`` and ``init_cfg`` pretrained weights: all
    go through ``mmengine.runner.CheckpointLoader.load_checkpoint``, which is
    wrapped here so that a refused file raises
    :class:`UntrustedCheckpointError` naming it. With ``trust=True``, writes
    a warning to ``stream`` (stderr) and unpickles fully instead.
    """
    from mmengine.runner.checkpoint import CheckpointLoader

    if trust:
        print(f'WARNING: {TRUST_FLAG}: checkpoints are fully unpickled; a '
              'crafted checkpoint file can run any code as you. Use it only '
              'for files you made or trust.', file=stream or sys.stderr,
              flush=True)
        with _env(FULL_UNPICKLING_ENV, '1'):
            yield
        return

    original = CheckpointLoader.__dict__['load_checkpoint']
    CheckpointLoader.load_checkpoint = staticmethod(
        _refuse_with_name(original.__get__(None, CheckpointLoader)))
    try:
        # A variable left in the environment must not undo the check.
        with _env(FULL_UNPICKLING_ENV, None), \
                torch.serialization.safe_globals(
                    mmengine_checkpoint_globals()):
            yield
    finally:
        CheckpointLoader.load_checkpoint = original


def load_checkpoint_file(filename, trust=False, map_location='cpu'):
    """Load ``filename`` the way the tools do (weights-only unless trusted).

    Raises:
        UntrustedCheckpointError: the file needs full unpickling.
    """
    from mmengine.runner.checkpoint import CheckpointLoader
    with checkpoint_loading(trust):
        return CheckpointLoader.load_checkpoint(
            filename, map_location=map_location, logger='silent')
