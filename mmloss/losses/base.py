"""The base of every registered loss module, and the kernels' reduction step.

:class:`BaseLoss` validates ``loss_weight`` once, at construction, and
resolves the reduction per call (``reduction_override`` or its own), so the
modules themselves only gather arguments and call their family's pure
function. An unknown ``reduction`` is stored and refused at the call, the
moment MMDetection refuses it (its modules accept any value when built),
with a :class:`~mmloss.errors.LossValueError` listing the valid ones.

:func:`reduce_in_kernel` is how a kernel (the fast path of a loss, see
:mod:`mmloss.engine.functions`) applies a :class:`~mmloss.reduction.
Reduction` to the value it computed and to the factor of its gradient;
:func:`gradient_scale` is that factor alone, for a gradient kernel that runs
in backward.
"""
import warnings
from numbers import Number
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..checks import (CHECK_FINITE_FLAG, REDUCTIONS, check_loss_weight,
                      check_reduction, raise_if_not_finite)
from ..reduction import Reduction


def reduce_in_kernel(rule: Reduction, value: Tensor, count: int,
                     fused: bool, scale: Union[Number, Tensor] = 1.0
                     ) -> Tuple[Tensor, Union[Number, Tensor]]:
    """A kernel's ``(value, scale)`` after the reduction ``rule``.

    ``value`` is ``sum(loss * weight)`` over ``count`` losses when
    ``fused`` (:meth:`~mmloss.reduction.Reduction.fusable` said so) and the
    element-wise loss otherwise; ``scale`` is the factor the kernel left out
    of its gradient, which is divided by the rule's denominator (the mean's
    ``count`` or ``avg_factor + eps``): the weight is the kernel's to apply.

    Returns:
        tuple: the reduced value (:meth:`~mmloss.reduction.Reduction.finish`
        or :meth:`~mmloss.reduction.Reduction.apply`) and the scale
        (:func:`gradient_scale`).
    """
    value = rule.kernel_value(value, count, fused)
    return value, gradient_scale(rule, count, scale, value.dtype)


def gradient_scale(rule: Reduction, count: int,
                   scale: Union[Number, Tensor] = 1.0,
                   dtype: Optional[torch.dtype] = None
                   ) -> Union[Number, Tensor]:
    """``scale`` divided by the denominator of ``rule`` over ``count``
    losses (the mean's ``count`` or ``avg_factor + eps``; nothing for
    ``'sum'``, ``'none'`` and the mean of nothing).

    A gradient kernel that runs in backward
    (:class:`~mmloss.engine.functions.GradientInBackward`) gets the factor
    of its gradient here, the same one :func:`reduce_in_kernel` gives a
    kernel that runs in forward. A tensor ``avg_factor`` gives a 0-dim
    tensor in ``dtype`` (when given).
    """
    denominator = rule.denominator(count)
    if denominator is None:
        return scale
    if isinstance(denominator, Tensor) and dtype is not None:
        denominator = denominator.to(dtype)
    return scale / denominator


# nn.Module's own call (hooks included), without a super() per loss call
_MODULE_CALL = nn.Module.__call__


class BaseLoss(nn.Module):
    """A loss module with ``reduction`` and ``loss_weight``.

    Every subclass gets the opt-in finiteness check: with the environment
    variable ``MMLOSS_CHECK_FINITE=1`` (or ``mmloss.set_check_finite(True)``)
    a NaN/Inf loss raises ``FloatingPointError`` naming the loss and its
    input shapes, instead of propagating silently.

    Args:
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'`` (anything else
            raises when the loss is called, as in MMDetection).
        loss_weight (float): non-negative factor applied to the loss.
    """

    def __init__(self, reduction: str = 'mean', loss_weight: float = 1.0):
        # nn.Module's own __init__, not super()'s: in a twin class
        # (mmloss.compat) the next class in the MRO is mmdet's loss, whose
        # __init__ must not run (its attributes and buffers are not ours).
        nn.Module.__init__(self)
        # checked at the call (resolve_reduction), where mmdet checks it
        self.reduction = reduction
        self.loss_weight = check_loss_weight(self.loss_name, loss_weight)

    def __call__(self, *args, **kwargs):
        output = _MODULE_CALL(self, *args, **kwargs)
        # Opt-in (MMLOSS_CHECK_FINITE=1): the check syncs with the device.
        # (Here rather than as a forward hook: any hook sends every call of
        # the module down torch's slower hooked path.)
        if CHECK_FINITE_FLAG.get():
            raise_if_not_finite(self.loss_name, output, (args, kwargs))
        return output

    def warn_ignored(self, argument: str, value, why: str,
                     functional: str) -> None:
        """One ``UserWarning`` per module and argument: ``value`` is
        ignored, as MMDetection 3.3 ignores it (``why``); the pure function
        ``functional`` applies it."""
        warned = self.__dict__.setdefault('_ignored_arguments', set())
        if argument in warned:
            return
        warned.add(argument)
        shown = f'a tensor of shape {tuple(value.shape)}' if isinstance(
            value, Tensor) else repr(value)
        warnings.warn(
            f'{self.loss_name}: {argument}={shown} is ignored, as '
            f'MMDetection 3.3 ignores it ({why}); use {functional} to '
            f'apply it', UserWarning, stacklevel=3)

    def apply_loss_weight(self, loss):
        """``loss_weight * loss``; the loss itself when the weight is 1 (no
        extra op or autograd node for the common case)."""
        return loss if self.loss_weight == 1.0 else self.loss_weight * loss

    #: The class name, used in every error message (a class attribute, set
    #: for each subclass: read on every call).
    loss_name: str = 'BaseLoss'

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.loss_name = cls.__name__

    def resolve_reduction(self, reduction_override: Optional[str]) -> str:
        """The reduction for this call: the override if given, else ours.

        Raises:
            LossValueError: the one used is not ``'none'``, ``'mean'`` or
                ``'sum'`` (also an ``AssertionError``, what mmdet raises
                for a bad override, and a ``ValueError``, what it raises
                for a bad ``reduction``).
        """
        if reduction_override is None:
            reduction = self.reduction
            if reduction in REDUCTIONS:
                return reduction
            return check_reduction(self.loss_name, reduction)
        return check_reduction(self.loss_name, reduction_override,
                               'reduction_override')

    def extra_repr(self) -> str:
        return f'reduction={self.reduction!r}, loss_weight={self.loss_weight}'
