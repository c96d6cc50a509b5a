"""Type aliases shared by the loss functions' and modules' signatures.

MMDetection fixes the arguments of its losses (``weight``, ``avg_factor``,
``reduction_override``, ...); these aliases spell their types once.
"""
from typing import Optional, Union

from torch import Tensor

__all__ = ['AvgFactor', 'OptTensor', 'OptStr']

#: ``avg_factor``: the denominator of the mean, or ``None`` for the count.
AvgFactor = Optional[Union[float, Tensor]]
#: An optional tensor argument, e.g. ``weight``.
OptTensor = Optional[Tensor]
#: An optional string argument, e.g. ``reduction_override``.
OptStr = Optional[str]
