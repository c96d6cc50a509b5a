"""The base of every registered loss module.

It validates ``reduction`` and ``loss_weight`` once, at construction, and
resolves ``reduction_override`` per call, so the modules themselves only
gather arguments and call their family's pure function.
"""
from typing import Optional

from torch import nn

from ..checks import (check_finite_enabled, check_loss_weight,
                      check_reduction, raise_if_not_finite)


class BaseLoss(nn.Module):
    """A loss module with ``reduction`` and ``loss_weight``.

    Every subclass gets the opt-in finiteness check: with the environment
    variable ``MMLOSS_CHECK_FINITE=1`` (or ``mmloss.set_check_finite(True)``)
    a NaN/Inf loss raises ``FloatingPointError`` naming the loss and its
    input shapes, instead of propagating silently.

    Args:
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): non-negative factor applied to the loss.
    """

    def __init__(self, reduction: str = 'mean', loss_weight: float = 1.0):
        super().__init__()
        self.reduction = check_reduction(self.loss_name, reduction)
        self.loss_weight = check_loss_weight(self.loss_name, loss_weight)

    def __call__(self, *args, **kwargs):
        output = super().__call__(*args, **kwargs)
        # Opt-in (MMLOSS_CHECK_FINITE=1): the check syncs with the device.
        # (Here rather than as a forward hook: any hook sends every call of
        # the module down torch's slower hooked path.)
        if check_finite_enabled():
            raise_if_not_finite(self.loss_name, output, (args, kwargs))
        return output

    def apply_loss_weight(self, loss):
        """``loss_weight * loss``; the loss itself when the weight is 1 (no
        extra op or autograd node for the common case)."""
        return loss if self.loss_weight == 1.0 else self.loss_weight * loss

    @property
    def loss_name(self) -> str:
        """The class name, used in every error message."""
        return type(self).__name__

    def resolve_reduction(self, reduction_override: Optional[str]) -> str:
        """The reduction for this call: the override if given, else ours."""
        if reduction_override is None:
            return self.reduction
        return check_reduction(self.loss_name, reduction_override,
                               'reduction_override')

    def extra_repr(self) -> str:
        return f'reduction={self.reduction!r}, loss_weight={self.loss_weight}'
