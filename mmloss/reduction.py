"""Element-wise weighting and reduction, with MMDetection 3.3's exact rules.

* ``'none'`` returns the element-wise loss (times ``weight``) and ignores
  ``avg_factor``.
* ``'mean'`` without ``avg_factor`` is ``loss.mean()`` (computed as the sum
  over the count for float32/float64 losses of at least the device's
  :attr:`~mmloss.engine.dispatch.Tuning.mean_by_sum_elements`: the same
  value, and a backward that divides the scalar gradient, not one of the
  loss's size; smaller losses take ``mean()``'s one op); with it, it is
  ``loss.sum() / (avg_factor + eps)`` where ``eps`` is the float32 machine
  epsilon, so ``avg_factor=0`` gives ``sum / eps`` (zero for a zero sum).
* ``'sum'`` is ``loss.sum()``; ``'sum'`` with ``avg_factor`` raises.

One deliberate difference: the mean of an *empty* loss is ``0`` (connected to
the graph) instead of ``NaN``, so a batch without positives never poisons a
training run. An unknown reduction raises a
:class:`~mmloss.errors.LossValueError` (a ``ValueError``, as in mmdet, and
an ``AssertionError``, what mmdet's modules raise for a bad override) that
lists the valid ones.
"""
import functools
from typing import Callable, NamedTuple, Optional, Union

import torch
from torch import Tensor

from .checks import REDUCTIONS, check_reduction
from .engine import dispatch
from .errors import LossValueError

FLOAT32_EPS = torch.finfo(torch.float32).eps

# dtypes whose sum is the dtype's own (a half sum would overflow where the
# mean does not: mean() accumulates and divides in float32 first)
_SUM_THEN_DIVIDE = (torch.float32, torch.float64)


def reduce_loss(loss: Tensor, reduction: str) -> Tensor:
    """Reduce an element-wise loss by ``'none'``, ``'mean'`` or ``'sum'``.

    Args:
        loss (Tensor): element-wise loss of any shape.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.

    Returns:
        Tensor: ``loss`` itself, its mean (``0`` when empty) or its sum.
    """
    return Reduction('reduce_loss', None, reduction).apply(loss)


class Reduction(NamedTuple):
    """How a loss is weighted and reduced: mmdet 3.3's rules, in one place.

    A family either hands its element-wise loss to :meth:`apply`, or, when
    its fast kernel produced ``sum(loss * weight)`` itself, finishes that
    sum with :meth:`finish` (:meth:`fusable` says when it may). Both give
    the same value; errors name ``loss_name``.

    Attributes:
        loss_name (str): the loss named in errors.
        weight (Tensor, optional): element-wise weight, broadcast to the
            loss.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean.
    """
    loss_name: str
    weight: Optional[Tensor] = None
    reduction: str = 'mean'
    avg_factor: Optional[Union[float, Tensor]] = None

    @staticmethod
    def check(loss_name: str, reduction: str, avg_factor=None) -> None:
        """Check ``reduction`` (and that ``'sum'`` comes without
        ``avg_factor``, which mmdet refuses), without building a rule."""
        if avg_factor is None and reduction in REDUCTIONS:
            return  # the common case, without further calls
        check_reduction(loss_name, reduction)
        if reduction == 'sum' and avg_factor is not None:
            raise LossValueError(
                f'{loss_name}: avg_factor can not be used '
                f'with reduction="sum"')

    def checked(self) -> 'Reduction':
        """``self`` after :meth:`check`."""
        Reduction.check(self.loss_name, self.reduction, self.avg_factor)
        return self

    def cast(self, dtype: torch.dtype) -> 'Reduction':
        """This rule with its weight in ``dtype`` (itself when it is)."""
        if self.weight is None or self.weight.dtype == dtype:
            return self
        return self._replace(weight=self.weight.to(dtype))

    @property
    def needs_grad(self) -> bool:
        """Whether the weight or ``avg_factor`` wants a gradient (fast
        kernels treat both as constants: such calls take the plain
        formula)."""
        return (self.weight is not None and self.weight.requires_grad) or (
            isinstance(self.avg_factor, Tensor)
            and self.avg_factor.requires_grad)

    @property
    def reduces(self) -> bool:
        """Whether the result is a scalar (``'mean'`` or ``'sum'``)."""
        return self.reduction != 'none'

    def apply(self, loss: Tensor) -> Tensor:
        """Weight and reduce an element-wise ``loss``."""
        if self.weight is not None:
            loss = loss * self.weight
        reduction = self.reduction
        if self.avg_factor is None:
            if reduction == 'mean':
                count = loss.numel()
                if count == 0:
                    # sum() of an empty tensor is a zero that keeps the
                    # graph
                    return loss.sum()
                if loss.dtype in _SUM_THEN_DIVIDE and count >= \
                        dispatch.tuning(loss).mean_by_sum_elements:
                    # mean()'s value (a sum divided by the count), but its
                    # backward divides the scalar gradient before expanding
                    # it, where mean()'s divides a tensor of the loss's size
                    # (fewer losses: mean()'s one op is cheaper)
                    return loss.sum() / count
                return loss.mean()
            if reduction == 'sum':
                return loss.sum()
            check_reduction(self.loss_name, reduction)
            return loss
        self.checked()
        if self.reduction == 'mean':
            return loss.sum() / (self.avg_factor + FLOAT32_EPS)
        return loss

    def kernel_value(self, value: Tensor, count: int, fused: bool) -> Tensor:
        """A kernel's result: :meth:`finish` of ``value = sum(loss *
        weight)`` over ``count`` losses when ``fused``
        (:meth:`fusable`), else :meth:`apply` of the element-wise
        ``value``."""
        return self.finish(value, count) if fused else self.apply(value)

    def denominator(self, count: int) -> Union[None, float, Tensor]:
        """What :meth:`finish` divides a sum of ``count`` losses by
        (``None`` for none: ``'sum'``, or the mean of nothing)."""
        if self.reduction != 'mean':
            return None
        if self.avg_factor is not None:
            return self.avg_factor + FLOAT32_EPS
        return count if count > 0 else None

    def finish(self, total: Tensor, count: int) -> Tensor:
        """``'mean'``/``'sum'`` from ``total = sum(loss * weight)`` over
        ``count`` losses, without the element-wise tensor."""
        reduction, avg_factor = self.reduction, self.avg_factor
        if reduction == 'mean' and avg_factor is None:
            # the common case, without further calls (every loss call)
            return total / count if count > 0 else total
        self.checked()
        if reduction == 'none':
            raise ValueError(f'{self.loss_name}: a fused sum cannot give '
                             f'reduction="none"')
        denominator = self.denominator(count)
        if denominator is None:  # 'sum'; the mean of nothing is 0
            return total
        if isinstance(denominator, Tensor):
            denominator = denominator.to(total.dtype)
        return total / denominator

    def torch_reduction(self, count: int) -> Optional[str]:
        """The ``reduction`` argument with which torch's own losses
        (``F.mse_loss``, ``F.smooth_l1_loss``, ...) give :meth:`apply`'s
        result for an unweighted loss of ``count`` elements, or ``None``
        where they cannot (a weight, ``avg_factor``, the mean of nothing,
        which torch makes NaN)."""
        if self.weight is not None or self.avg_factor is not None:
            return None
        check_reduction(self.loss_name, self.reduction)
        if self.reduction == 'mean' and count == 0:
            return None
        return self.reduction

    def fuses(self, dtype: torch.dtype, device,
              weight_shape=None) -> bool:
        """Whether a kernel computing in ``dtype`` on ``device`` may fuse
        this reduction: ``'mean'``/``'sum'`` with a constant weight of that
        dtype and device (and of exactly ``weight_shape``, where given)
        and a constant ``avg_factor``. Anything else (differentiable or
        mismatched weights, ``'sum'`` with ``avg_factor``, which raises)
        takes the element-wise path."""
        reduction = self.reduction
        if reduction == 'none' or (reduction == 'sum'
                                   and self.avg_factor is not None):
            return False
        weight = self.weight
        if weight is not None and (
                weight.requires_grad or weight.dtype != dtype
                or weight.device != device or (
                    weight_shape is not None
                    and weight.shape != weight_shape)):
            return False
        return not (isinstance(self.avg_factor, Tensor)
                    and self.avg_factor.requires_grad)

    def fusable(self, like: Tensor, weight_shape=None) -> bool:
        """:meth:`fuses` for a loss computed like ``like``, the weight of
        exactly ``weight_shape`` (``like``'s shape by default)."""
        if self.weight is None and self.avg_factor is None:
            return self.reduction != 'none'  # the common case, no call
        return self.fuses(like.dtype, like.device,
                          like.shape if weight_shape is None
                          else weight_shape)

    def run_kernel(self, run: Callable[[bool, Optional[Tensor]], Tensor],
                   dtype: torch.dtype, device, count: int) -> Tensor:
        """The loss by a kernel ``run(reduce_sum, weight)`` computing in
        ``dtype`` on ``device``, weighted and reduced by these rules.

        Where :meth:`fuses` (any weight shape the kernel broadcasts), the
        kernel gets the weight and returns ``sum(loss * weight)``, which
        :meth:`finish` turns into the reduction over ``count`` losses;
        otherwise it gets ``reduce_sum=False`` and no weight, and returns
        the element-wise loss, which :meth:`apply` weights and reduces.
        """
        fused = self.fuses(dtype, device)
        value = run(fused, self.weight if fused else None)
        return self.finish(value, count) if fused else self.apply(value)


def weighted_total(loss: Tensor, weight: Optional[Tensor],
                   reduce_sum: bool) -> Tensor:
    """A kernel's element-wise ``loss`` times ``weight`` (if given),
    summed to one number where ``reduce_sum`` (the fused reduction that
    :meth:`Reduction.finish` completes)."""
    if weight is not None:
        loss = loss * weight
    return loss.sum() if reduce_sum else loss


def weight_reduce_loss(loss: Tensor,
                       weight: Optional[Tensor] = None,
                       reduction: str = 'mean',
                       avg_factor: Optional[Union[float, Tensor]] = None
                       ) -> Tensor:
    """Multiply by ``weight`` and reduce, averaging by ``avg_factor`` if given.

    ``mean`` with ``avg_factor`` is ``sum(loss * weight) / (avg_factor + eps)``
    with ``eps = torch.finfo(torch.float32).eps`` (see :class:`Reduction`).

    Args:
        loss (Tensor): element-wise loss.
        weight (Tensor, optional): element-wise weight, broadcast to ``loss``.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean.

    Returns:
        Tensor: the reduced loss.
    """
    return Reduction('weight_reduce_loss', weight, reduction,
                     avg_factor).apply(loss)


def reduce_weighted_sum(loss_name: str, total: Tensor, count: int,
                        reduction: str,
                        avg_factor: Optional[Union[float, Tensor]] = None
                        ) -> Tensor:
    """``'mean'`` / ``'sum'`` from an already weighted sum of ``count`` losses
    (:meth:`Reduction.finish`)."""
    return Reduction(loss_name, None, reduction, avg_factor).finish(total,
                                                                    count)


def weighted_loss(loss_func: Callable) -> Callable:
    """Turn an element-wise loss ``f(pred, target, **kw)`` into a weighted one.

    The wrapped function has the signature ``f(pred, target, weight=None,
    reduction='mean', avg_factor=None, **kw)`` and applies
    :func:`weight_reduce_loss` to the element-wise result.

    Example:
        >>> @weighted_loss
        ... def absolute_error(pred, target):
        ...     return (pred - target).abs()
        >>> absolute_error(torch.tensor([0., 2, 3]), torch.ones(3),
        ...                torch.tensor([1., 0, 1]), avg_factor=2)
        tensor(1.5000)
    """

    @functools.wraps(loss_func)
    def wrapper(pred: Tensor,
                target: Tensor,
                weight: Optional[Tensor] = None,
                reduction: str = 'mean',
                avg_factor: Optional[Union[float, Tensor]] = None,
                **kwargs) -> Tensor:
        loss = loss_func(pred, target, **kwargs)
        return weight_reduce_loss(loss, weight, reduction, avg_factor)

    return wrapper
