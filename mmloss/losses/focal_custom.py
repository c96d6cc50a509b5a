"""Sigmoid focal loss with a custom classifier interface (V3Det).

Paper: Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, https://arxiv.org/abs/1708.02002

The loss is the sigmoid focal loss of :mod:`mmloss.losses.focal` for
logits ``x`` (N, C) and integer labels ``(N,)`` in ``[0, C]`` (``C`` is the
background, a row of negatives)::

    p     = sigmoid(x)
    pt'   = (1 - p) * t + p * (1 - t)        t: one-hot of the label
    FL    = (alpha * t + (1 - alpha) * (1 - t)) * pt' ** gamma * BCE(x, t)

What :class:`FocalCustomLoss` adds is the interface MMDetection's heads
read for the V3Det configs (13204 classes, FCOS): a fixed ``num_classes``,
``custom_cls_channels``/``custom_activation``/``custom_accuracy`` and the
methods behind them (:meth:`FocalCustomLoss.get_cls_channels`,
:meth:`FocalCustomLoss.get_activation`,
:meth:`FocalCustomLoss.get_accuracy`). Wang et al., "V3Det: Vast
Vocabulary Visual Detection Dataset", ICCV 2023,
https://arxiv.org/abs/2304.03752.
"""
from numbers import Integral
from typing import Dict

from torch import Tensor

from ..checks import check_float
from ..errors import LossValueError
from ..registry import MODELS
from ..typing_utils import AvgFactor, OptStr, OptTensor
from .base import BaseLoss
from .cross_entropy import top1_accuracy
from .focal import _check_use_sigmoid, _focal_loss, _set_focal_options

__all__ = ['FocalCustomLoss']


@MODELS.register_module()
class FocalCustomLoss(BaseLoss):
    """Sigmoid focal loss for V3Det, twin of mmdet's ``FocalCustomLoss``.

    Paper: Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, https://arxiv.org/abs/1708.02002

    ``FL = a_t * pt' ** gamma * BCE(x, t)`` of logits (N, C) and labels
    (N,) in ``[0, C]`` (``C`` the background); the same values as
    :class:`~mmloss.losses.focal.FocalLoss`, and the same fast label path.
    Heads see ``custom_cls_channels = custom_activation = custom_accuracy
    = True``: the classifier has ``num_classes`` channels, scores are their
    sigmoid, and the accuracy is the top-1 accuracy of the foreground rows.

    Args:
        use_sigmoid (bool): must be True (only the sigmoid form exists).
        num_classes (int): number of classes; required (the default -1
            raises, as in MMDetection).
        gamma (float): focusing exponent. Defaults to 2.0.
        alpha (float): positive/negative balance. Defaults to 0.25.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): factor applied to the loss.
        activated (bool): must be False. (MMDetection's twin accepts True
            but still treats ``pred`` as logits; mmloss refuses rather than
            silently ignore it.)
    """

    def __init__(self, use_sigmoid=True, num_classes=-1, gamma=2.0,
                 alpha=0.25, reduction='mean', loss_weight=1.0,
                 activated=False):
        super().__init__(reduction, loss_weight)
        self.use_sigmoid = _check_use_sigmoid(self.loss_name, use_sigmoid)
        if isinstance(num_classes, bool) or not isinstance(
                num_classes, Integral) or num_classes <= 0:
            raise LossValueError(f'{self.loss_name}: num_classes must be a '
                                 f'positive int (the number of classes of the '
                                 f'head), but got {num_classes!r}')
        _set_focal_options(self, gamma, alpha, activated)
        if self.activated:
            raise LossValueError(f'{self.loss_name}: activated=True is not '
                                 'supported: pred must hold logits')
        self.num_classes = int(num_classes)
        # what MMDetection's heads read: the channels, the activation and
        # the accuracy come from this loss
        self.custom_cls_channels = True
        self.custom_activation = True
        self.custom_accuracy = True

    def get_cls_channels(self, num_classes: int) -> int:
        """The classifier has ``num_classes`` channels (the head's number
        of classes must be the loss's)."""
        if num_classes != self.num_classes:
            raise LossValueError(
                f'{self.loss_name}: the head has {num_classes} '
                f'classes but the loss {self.num_classes}')
        return num_classes

    def get_activation(self, cls_score: Tensor) -> Tensor:
        """Scores (N, num_classes): the sigmoid of the class logits."""
        return cls_score[:, :self.num_classes].sigmoid()

    def get_accuracy(self, cls_score: Tensor,
                     labels: Tensor) -> Dict[str, Tensor]:
        """``{'acc_classes'}``: top-1 accuracy (percent) of the rows whose
        label is a class (not the background ``num_classes``)."""
        positive = labels < self.num_classes
        classes = cls_score[:, :self.num_classes]
        return dict(acc_classes=top1_accuracy(classes[positive],
                                              labels[positive]))

    def forward(self, pred: Tensor, target: Tensor, weight: OptTensor = None,
                avg_factor: AvgFactor = None,
                reduction_override: OptStr = None) -> Tensor:
        """Weighted focal loss of logits (N, C) and labels (N,).

        Args:
            pred (Tensor): (N, C) logits.
            target (Tensor): (N,) labels in ``[0, C]``, ``C`` the
                background (a one-hot (N, C) target is accepted too).
            weight (Tensor, optional): (N,), (N, 1), (N, C) or (N * C,).
            avg_factor (float | Tensor, optional): denominator of the mean.
            reduction_override (str, optional): overrides ``reduction``.

        Returns:
            Tensor: (N, C) for ``'none'``, else a scalar; float32 for half
            inputs, else ``pred``'s dtype.
        """
        reduction = self.resolve_reduction(reduction_override)
        check_float(self.loss_name, 'pred', pred)
        if pred.dim() != 2 or pred.size(1) != self.num_classes:
            raise LossValueError(f'{self.loss_name}: pred must have shape (N, '
                                 f'num_classes={self.num_classes}), but has '
                                 f'shape {tuple(pred.shape)}')
        # (half inputs: computed in float32, reduced to float32)
        loss = _focal_loss(self.loss_name, pred, target, weight,
                           self.gamma, self.alpha, 0.0, reduction,
                           avg_factor, False)
        return self.apply_loss_weight(loss)

    def extra_repr(self) -> str:
        return (f'num_classes={self.num_classes}, gamma={self.gamma}, '
                f'alpha={self.alpha}, ' + super().extra_repr())
