"""Argument and input checks shared by every loss family.

Each check names the loss, the argument and what it got, and raises
:class:`~mmloss.errors.LossValueError` or
:class:`~mmloss.errors.LossTypeError`: a ``ValueError`` / ``TypeError``
that is also each type MMDetection raises for the same mistake (see
:mod:`mmloss.errors`). They read only shapes and dtypes (tensor metadata),
never tensor values, so they add no host sync on an accelerator.
"""
from numbers import Real
from typing import Optional, Sequence

import torch
from torch import Tensor

from .engine import dispatch
from .errors import LossTypeError, LossValueError

REDUCTIONS = ('none', 'mean', 'sum')


def check_reduction(loss_name: str, reduction: str,
                    argument: str = 'reduction') -> str:
    """Return ``reduction`` if it is one of :data:`REDUCTIONS`."""
    if reduction not in REDUCTIONS:
        raise LossValueError(f'{loss_name}: {argument} must be one of '
                             f'{", ".join(map(repr, REDUCTIONS))}, '
                             f'but got {reduction!r}')
    return reduction


def check_loss_weight(loss_name: str, loss_weight) -> float:
    """Return ``loss_weight`` as a float if it is a non-negative number."""
    if isinstance(loss_weight, bool) or not isinstance(loss_weight, Real) \
            or not loss_weight >= 0:
        raise LossValueError(
            f'{loss_name}: loss_weight must be a non-negative '
            f'number, but got {loss_weight!r}')
    return float(loss_weight)


def check_positive(loss_name: str, argument: str, value,
                   allow_zero: bool = False) -> float:
    """Return ``value`` if it is a number > 0 (or >= 0 with ``allow_zero``)."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and (
        value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = '>= 0' if allow_zero else '> 0'
        raise LossValueError(
            f'{loss_name}: {argument} must be a number {bound}, '
            f'but got {value!r}')
    return value


def check_in_range(loss_name: str, argument: str, value, low: float,
                   high: float, high_inclusive: bool = False) -> float:
    """Return ``value`` if ``low <= value < high`` (``<= high`` if asked)."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and (
        low <= value <= high if high_inclusive else low <= value < high)
    if not ok:
        close = ']' if high_inclusive else ')'
        raise LossValueError(f'{loss_name}: {argument} must lie in '
                             f'[{low}, {high}{close}, but got {value!r}')
    return value


def check_tensor(loss_name: str, argument: str, value) -> Tensor:
    """Return ``value`` if it is a tensor."""
    if not isinstance(value, Tensor):
        raise LossTypeError(f'{loss_name}: {argument} must be a torch.Tensor, '
                            f'but got {type(value).__name__}')
    return value


def check_pred_target(loss_name: str, pred, target) -> None:
    """Raise unless ``pred`` and ``target`` are tensors (cheap enough for
    every call: the message is built only when one is not)."""
    if not isinstance(pred, Tensor):
        check_tensor(loss_name, 'pred', pred)
    if not isinstance(target, Tensor):
        check_tensor(loss_name, 'target', target)


def check_float(loss_name: str, argument: str, tensor) -> Tensor:
    """Return ``tensor`` if it is a tensor of floating-point numbers."""
    if isinstance(tensor, Tensor) and tensor.is_floating_point():
        return tensor
    check_tensor(loss_name, argument, tensor)
    if not tensor.is_floating_point():
        raise LossTypeError(
            f'{loss_name}: {argument} must be a floating point '
            f'tensor, but has dtype {tensor.dtype}')
    return tensor


def check_same_shape(loss_name: str, pred: Tensor, target: Tensor,
                     names: Sequence[str] = ('pred', 'target')) -> None:
    """Raise unless ``pred`` and ``target`` have the same shape."""
    if pred.shape != target.shape:
        raise LossValueError(f'{loss_name}: {names[0]} has shape '
                             f'{tuple(pred.shape)} but {names[1]} has shape '
                             f'{tuple(target.shape)}')


def check_box_shape(loss_name: str, pred: Tensor, target: Tensor,
                    coords: int = 4) -> None:
    """Raise unless ``pred`` and ``target`` are both (..., coords) boxes."""
    if isinstance(pred, Tensor) and isinstance(target, Tensor) and \
            pred.dim() and pred.shape[-1] == coords and \
            pred.shape == target.shape:
        return  # the common case in one test (every call of a box loss)
    check_tensor(loss_name, 'pred', pred)
    check_tensor(loss_name, 'target', target)
    if pred.dim() == 0 or pred.shape[-1] != coords:
        raise LossValueError(
            f'{loss_name}: pred must have shape (..., {coords}) '
            f'but has shape {tuple(pred.shape)}')
    check_same_shape(loss_name, pred, target)


def check_integer_labels(loss_name: str, labels: Tensor,
                         argument: str = 'target') -> None:
    """Raise unless ``labels`` holds integers (class indices)."""
    if labels.dtype.is_floating_point or labels.dtype.is_complex \
            or labels.dtype == torch.bool:
        raise LossTypeError(f'{loss_name}: {argument} must hold integer class '
                            f'indices, but has dtype {labels.dtype}')


def check_weight_shape(loss_name: str, weight: Optional[Tensor],
                       loss_shape: Sequence[int],
                       argument: str = 'weight') -> None:
    """Raise unless ``weight`` broadcasts to the element-wise loss shape."""
    if weight is None:
        return
    check_tensor(loss_name, argument, weight)
    if weight.shape == loss_shape:
        return
    try:
        shape = torch.broadcast_shapes(weight.shape, tuple(loss_shape))
    except RuntimeError:
        shape = None
    if shape != tuple(loss_shape):
        raise LossValueError(
            f'{loss_name}: {argument} has shape '
            f'{tuple(weight.shape)}, which does not broadcast '
            f'to the loss shape {tuple(loss_shape)}')


def check_label_range(loss_name: str, label: Tensor, high: int,
                      ignore_index: Optional[int] = None,
                      allow_negative: bool = False,
                      high_inclusive: bool = False,
                      argument: str = 'label') -> None:
    """Raise unless every label lies in ``[0, high)`` (or is ignored).

    This is a *value* check. Where reading values costs nothing (devices
    whose :data:`~mmloss.engine.dispatch.TUNING` entry has ``cpu_kernels``:
    the CPU) a bad label raises a :class:`~mmloss.errors.LossValueError`
    naming the loss (also an ``IndexError``, as torch's indexing raises
    for such a label in MMDetection, and a ``RuntimeError``). Elsewhere
    it is queued with ``torch._assert_async`` instead, so it never waits
    for the device: a bad label then fails (``RuntimeError``) at the next
    synchronisation. (The table's entry, not the fast-path switch, decides:
    a check is not a fast path.)

    Args:
        loss_name (str): loss named in the message.
        label (Tensor): integer labels.
        high (int): the first invalid label (``high + 1`` if
            ``high_inclusive``).
        ignore_index (int, optional): a label that is always allowed.
        allow_negative (bool): negative labels are allowed (they are ignored
            by the loss, as MMDetection's sigmoid cross-entropy does).
        high_inclusive (bool): ``high`` itself is a valid label.
    """
    if label.numel() == 0:
        return
    top = high + 1 if high_inclusive else high
    host = dispatch.tuning(label).cpu_kernels
    if host:
        # the common case in one reduction: every label (ignored ones
        # included) already in range
        low, high_seen = torch.aminmax(label)
        if (allow_negative or int(low) >= 0) and int(high_seen) < top:
            return
    # one reduction instead of a mask per condition: ignored labels are
    # replaced by 0 (always valid) and only the extremes are compared
    values = label if ignore_index is None else torch.where(
        label == ignore_index, 0, label)
    if allow_negative:
        ok = values.max() < top
    else:
        low, high_seen = torch.aminmax(values)
        ok = (low >= 0) & (high_seen < top)
    if host:
        if not bool(ok):
            bad = values >= top
            if not allow_negative:
                bad = bad | (values < 0)
            first = int(label[bad][0])
            valid = f'[0, {high}]' if high_inclusive else f'[0, {high})'
            if ignore_index is not None:
                valid += f' or ignore_index={ignore_index}'
            raise LossValueError(f'{loss_name}: {argument} holds {first}, but '
                                 f'labels must lie in {valid}')
    else:
        torch._assert_async(ok, f'{loss_name}: {argument} out of range')


def check_avg_factor(loss_name: str, reduction: str, avg_factor) -> None:
    """Raise, naming the loss, if ``avg_factor`` comes with ``'sum'``."""
    if reduction == 'sum' and avg_factor is not None:
        raise LossValueError(
            f'{loss_name}: avg_factor can not be used with '
            f'reduction="sum" (got avg_factor={avg_factor!r})')


CHECK_FINITE_ENV = 'MMLOSS_CHECK_FINITE'


def set_check_finite(enabled: Optional[bool]) -> None:
    """Turn the opt-in finiteness check of every loss module on or off.

    ``None`` defers to the environment variable ``MMLOSS_CHECK_FINITE``
    (``1``/``true``/``yes`` turn it on). The check costs a host sync per loss
    call on an accelerator, so it is off by default: a NaN in the prediction
    then simply propagates to the loss, never masked.
    """
    CHECK_FINITE_FLAG.forced = enabled


def check_finite_enabled() -> bool:
    """Whether loss modules raise on a non-finite result (see above)."""
    return CHECK_FINITE_FLAG.get()


#: The finiteness check's switch (its ``get()`` is
#: :func:`check_finite_enabled`, for callers on every loss call).
CHECK_FINITE_FLAG = dispatch.EnvFlag(CHECK_FINITE_ENV, False)


def _tensors(value):
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


def raise_if_not_finite(loss_name: str, output, inputs=()) -> None:
    """Raise ``FloatingPointError`` if any tensor in ``output`` is NaN/Inf.

    The message names the loss and the shapes and dtypes of the tensor
    ``inputs``, and says whether the inputs themselves were already
    non-finite (a diverging model) or the loss made them so.
    """
    bad = [t for t in _tensors(output)
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if not bad:
        return
    described = ', '.join(
        f'{tuple(t.shape)} {str(t.dtype).replace("torch.", "")}'
        for t in _tensors(inputs))
    nonfinite_inputs = any(
        t.is_floating_point() and not bool(torch.isfinite(t).all())
        for t in _tensors(inputs))
    cause = ('the inputs already hold NaN/Inf' if nonfinite_inputs else
             'the inputs are finite')
    raise FloatingPointError(
        f'{loss_name}: the loss is not finite ({cause}); inputs: '
        f'[{described}]. Raised because {CHECK_FINITE_ENV} is set or '
        f'mmloss.set_check_finite(True) was called.')
