"""The quality family's registered modules (``mmloss.<Name>`` in configs).

Each module holds its options, validated at construction, and calls its
loss's checked function with MMDetection's forward arguments; the function
checks the inputs (errors name the module), so a module checks nothing
twice.
"""
from typing import Optional

from torch import Tensor

from ...checks import check_positive
from ...errors import LossTypeError
from ...registry import MODELS
from ...typing_utils import OptStr, OptTensor
from ..base import BaseLoss
from ..focal import _check_use_sigmoid
from .distribution import _distribution_focal_loss
from .quality_focal import _quality_focal_loss
from .varifocal import _varifocal_loss

__all__ = ['VarifocalLoss', 'QualityFocalLoss', 'DistributionFocalLoss']


class _QualityFamilyLoss(BaseLoss):
    """The forward the three modules share (MMDetection's arguments).

    Subclasses name their checked function in ``loss_function``, called as
    ``loss_function(loss_name, pred, target, weight, reduction=...,
    avg_factor=..., **loss_kwargs())``.
    """

    loss_function = None

    def loss_kwargs(self) -> dict:
        """The module's options, as keyword arguments of its function."""
        return {}

    def non_negative(self, name: str, value: float) -> float:
        """``value`` of the option ``name``, checked to be ``>= 0``."""
        return check_positive(self.loss_name, name, value, allow_zero=True)

    def forward(self, pred: Tensor, target: Tensor, weight: OptTensor = None,
                avg_factor: Optional[int] = None,
                reduction_override: OptStr = None, **kwargs) -> Tensor:
        """The weighted loss of ``pred`` and ``target`` (the shapes of the
        module's function); ``reduction_override`` overrides
        ``reduction``."""
        if kwargs:  # named here: Python would name this shared forward
            raise LossTypeError(f'{self.loss_name}: unexpected keyword '
                                f'arguments {sorted(kwargs)}')
        reduction = self.resolve_reduction(reduction_override)
        return self.apply_loss_weight(type(self).loss_function(
            self.loss_name, pred, target, weight, reduction=reduction,
            avg_factor=avg_factor, **self.loss_kwargs()))


class _SigmoidQualityLoss(_QualityFamilyLoss):
    """VFL and QFL: sigmoid losses, whose ``use_sigmoid`` must be True."""

    def __init__(self, use_sigmoid: bool, reduction: str,
                 loss_weight: float) -> None:
        super().__init__(reduction, loss_weight)
        self.use_sigmoid = _check_use_sigmoid(self.loss_name, use_sigmoid)


@MODELS.register_module()
class VarifocalLoss(_SigmoidQualityLoss):
    """Varifocal loss (Zhang et al. 2021), twin of mmdet's ``VarifocalLoss``.

    Paper: Zhang et al., "VarifocalNet", CVPR 2021, https://arxiv.org/abs/2008.13367

    See :func:`varifocal_loss`; forward takes logits (N, C) and IoU-aware
    targets (N, C).

    Args:
        use_sigmoid (bool): must be True.
        alpha (float): weight of the negatives, ``>= 0``. Defaults to 0.75.
        gamma (float): focusing exponent. Defaults to 2.0.
        iou_weighted (bool): weight positives by their IoU target.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): factor applied to the loss.
    """

    loss_function = staticmethod(_varifocal_loss)

    def __init__(self,
                 use_sigmoid: bool = True,
                 alpha: float = 0.75,
                 gamma: float = 2.0,
                 iou_weighted: bool = True,
                 reduction: str = 'mean',
                 loss_weight: float = 1.0) -> None:
        super().__init__(use_sigmoid, reduction, loss_weight)
        self.alpha = self.non_negative('alpha', alpha)
        self.gamma = self.non_negative('gamma', gamma)
        self.iou_weighted = bool(iou_weighted)

    def loss_kwargs(self) -> dict:
        return dict(alpha=self.alpha, gamma=self.gamma,
                    iou_weighted=self.iou_weighted)


@MODELS.register_module()
class QualityFocalLoss(_SigmoidQualityLoss):
    """Quality focal loss (Li et al. 2020), twin of mmdet's QFL.

    Paper: Li et al., "Generalized Focal Loss", NeurIPS 2020, https://arxiv.org/abs/2006.04388

    See :func:`quality_focal_loss`; forward takes logits (N, C) and a
    target ``(labels, scores)`` or a soft one (N, C).

    Args:
        use_sigmoid (bool): must be True.
        beta (float): focusing exponent. Defaults to 2.0.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): factor applied to the loss.
        activated (bool): ``pred`` holds probabilities, not logits.
    """

    loss_function = staticmethod(_quality_focal_loss)

    def __init__(self,
                 use_sigmoid=True,
                 beta=2.0,
                 reduction='mean',
                 loss_weight=1.0,
                 activated=False):
        super().__init__(use_sigmoid, reduction, loss_weight)
        self.beta = self.non_negative('beta', beta)
        self.activated = bool(activated)

    def loss_kwargs(self) -> dict:
        return dict(beta=self.beta, activated=self.activated)


@MODELS.register_module()
class DistributionFocalLoss(_QualityFamilyLoss):
    """Distribution focal loss (Li et al. 2020), twin of mmdet's DFL.

    Paper: Li et al., "Generalized Focal Loss", NeurIPS 2020, https://arxiv.org/abs/2006.04388

    See :func:`distribution_focal_loss`; forward takes logits (N, n + 1)
    and distances (N,).

    Args:
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): factor applied to the loss.
    """

    loss_function = staticmethod(_distribution_focal_loss)

    def __init__(self, reduction='mean', loss_weight=1.0):
        super().__init__(reduction, loss_weight)
