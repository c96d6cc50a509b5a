"""What the three quality losses share: the check of ``pred`` and the
compute dtype and reduction rule of a call."""
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ...checks import check_tensor
from ...precision import compute_dtype
from ...reduction import Reduction


def _check_float_pred(loss_name: str, pred: Tensor) -> None:
    check_tensor(loss_name, 'pred', pred)
    if not pred.dtype.is_floating_point:
        raise TypeError(f'{loss_name}: pred must be a floating point tensor, '
                        f'but has dtype {pred.dtype}')


def _weighted_rule(loss_name: str, pred: Tensor, weight: Optional[Tensor],
                   reduction: str,
                   avg_factor: Optional[Union[float, Tensor]]
                   ) -> Tuple[torch.dtype, Optional[Tensor], Reduction]:
    """``(dtype, weight, rule)`` of a call on checked inputs: ``pred``'s
    compute dtype (float32 at least), ``weight`` in it and the reduction
    rule of that weight. Call it with autocast off."""
    dtype = compute_dtype(pred)
    rule = Reduction(loss_name, weight, reduction, avg_factor).cast(dtype)
    return dtype, rule.weight, rule
