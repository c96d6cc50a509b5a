"""What the three quality losses share: the check of ``pred`` and the
compute dtype and reduction rule of a call."""
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ...checks import check_float
from ...precision import compute_dtype
from ...reduction import Reduction


def _check_float_pred(loss_name: str, pred: Tensor) -> None:
    check_float(loss_name, 'pred', pred)


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
