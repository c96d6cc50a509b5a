"""Equalization loss v2: gradient-balanced sigmoid BCE for long-tailed data.

Paper: Tan et al., "Equalization Loss v2: A New Gradient Balance Approach for Long-tailed Object Detection", CVPR 2021, https://arxiv.org/abs/2012.08548

The classifier has ``C = num_classes + 1`` sigmoid channels: the classes,
then an objectness channel (the background label ``num_classes`` is its
positive). For each class ``j`` the loss keeps the accumulated magnitude of
the gradients its positives and its negatives received, ``P_j`` and
``N_j``, and from their ratio ``r_j = P_j / (N_j + 1e-10)`` re-weights the
next step's BCE::

    q_j   = 1 / (1 + exp(-gamma * (r_j - mu)))    (q = 1 for the objectness)
    w+_j  = 1 + alpha * (1 - q_j)                 weight of a positive
    w-_j  = q_j                                   weight of a negative
    L_i   = sum_j w_ij * BCE(x_ij, t_ij),  w_ij = w+_j if t_ij = 1 else w-_j

with ``t`` the one-hot of the label. The module's loss is MMDetection's
``sum_i L_i / N`` whatever ``weight``, ``avg_factor``, ``reduction`` or
``reduction_override`` say (MMDetection ignores the four; so does
:class:`EQLV2Loss`, warning once); :func:`eqlv2_loss` applies them.
After the loss, the gradient magnitudes of this step's
BCE, ``|t - sigmoid(x)|`` weighted by ``w``, are added to ``P`` and ``N``
(classes only, not the objectness). With ``r = 100`` at the start every
weight is 1.

Shapes: logits (N, C), labels (N,) in ``[0, C)``. No one-hot target is
built: the negative formula runs on every entry and the label's entry is
overwritten by the positive one (:func:`eqlv2_elementwise_loss`).
"""
from numbers import Integral
from typing import Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from ..checks import (check_float, check_integer_labels, check_label_range,
                      check_positive, check_tensor)
from ..engine import dispatch
from ..errors import LossValueError
from ..precision import compute_dtype, restore_loss, to_dtype
from ..reduction import Reduction
from ..registry import MODELS
from ..typing_utils import AvgFactor, OptStr, OptTensor
from .base import BaseLoss

__all__ = ['eqlv2_class_weights', 'eqlv2_elementwise_loss',
           'eqlv2_gradient_statistics', 'eqlv2_loss', 'EQLV2Loss']

#: The ratio every class starts from: its weights are then all 1.
INITIAL_POS_NEG = 100.0
#: Added to the accumulated negative gradient before dividing.
RATIO_EPS = 1e-10


def eqlv2_class_weights(pos_neg: Tensor, gamma: float, mu: float,
                        alpha: float) -> Tuple[Tensor, Tensor]:
    """The positive and negative weights ``(w+, w-)`` of every channel.

    ``w- = 1 / (1 + exp(-gamma (r - mu)))`` for the classes and 1 for the
    objectness channel; ``w+ = 1 + alpha (1 - w-)``.

    Args:
        pos_neg (Tensor): (num_classes,) gradient ratios ``r``.
        gamma, mu, alpha (float): see the module docstring.

    Returns:
        tuple[Tensor, Tensor]: ``(w+, w-)``, each (num_classes + 1,).
    """
    negative = torch.cat([
        1 / (1 + torch.exp(-gamma * (pos_neg - mu))),
        pos_neg.new_ones(1)
    ])
    return 1 + alpha * (1 - negative), negative


def eqlv2_elementwise_loss(cls_score: Tensor, label: Tensor,
                           pos_weight: Tensor, neg_weight: Tensor) -> Tensor:
    """``w_ij * BCE(x_ij, t_ij)`` (N, C) without a one-hot target.

    Every entry gets the negative term ``w-_j * softplus(x_ij)``
    (``BCE(x, 0)``); each row's label entry is replaced by the positive
    term ``w+_l * softplus(-x_il)`` (``BCE(x, 1)``).
    """
    loss = neg_weight * F.softplus(cls_score)
    column = label.reshape(-1, 1)
    positive = pos_weight[column] * F.softplus(-cls_score.gather(1, column))
    return loss.scatter(1, column, positive)


@torch.no_grad()
def eqlv2_gradient_statistics(cls_score: Tensor, label: Tensor,
                              pos_weight: Tensor, neg_weight: Tensor
                              ) -> Tuple[Tensor, Tensor]:
    """This step's weighted gradient magnitudes per class, ``(dP, dN)``.

    The BCE gradient of a logit is ``sigmoid(x) - t``: a positive adds
    ``w+_l (1 - p_il)`` to ``dP_l``, a negative ``w-_j p_ij`` to ``dN_j``.
    The objectness channel (the last) is left out.

    Args:
        cls_score (Tensor): (N, C) logits (read without gradient).
        label (Tensor): (N,) labels in ``[0, C)``.
        pos_weight, neg_weight (Tensor): (C,) from
            :func:`eqlv2_class_weights`.

    Returns:
        tuple[Tensor, Tensor]: ``(dP, dN)``, each (C - 1,), in
        ``cls_score``'s dtype.
    """
    prob = cls_score.detach().sigmoid()
    column = label.reshape(-1, 1)
    negative = (prob * neg_weight).scatter(1, column, 0.0).sum(0)
    own = prob.gather(1, column).squeeze(1)
    positive = torch.zeros_like(negative).index_add_(
        0, label, (1 - own) * pos_weight[label])
    return positive[:-1], negative[:-1]


def _check_inputs(loss_name: str, cls_score: Tensor, label: Tensor,
                  weight: Optional[Tensor], reduction: str, avg_factor,
                  num_channels: Optional[int] = None) -> None:
    """The one validator: float (N, C) logits, integer (N,) labels in
    ``[0, C)``, a (N,) or (N, C) weight, a valid reduction."""
    Reduction.check(loss_name, reduction, avg_factor)
    check_float(loss_name, 'cls_score', cls_score)
    check_tensor(loss_name, 'label', label)
    check_integer_labels(loss_name, label, 'label')
    if cls_score.dim() != 2 or label.shape != cls_score.shape[:1] or (
            num_channels is not None and cls_score.size(1) != num_channels):
        channels = 'C' if num_channels is None else \
            f'num_classes + 1 = {num_channels}'
        raise LossValueError(f'{loss_name}: cls_score must have shape (N, '
                             f'{channels}) and label shape (N,), but got '
                             f'cls_score {tuple(cls_score.shape)} and label '
                             f'{tuple(label.shape)}')
    if weight is not None:
        check_tensor(loss_name, 'weight', weight)
        if weight.shape not in (label.shape, cls_score.shape):
            raise LossValueError(f'{loss_name}: weight has shape '
                                 f'{tuple(weight.shape)}, but must be '
                                 f'{tuple(label.shape)} or '
                                 f'{tuple(cls_score.shape)}')
    check_label_range(loss_name, label, cls_score.size(1), argument='label')


def _eqlv2_loss(loss_name: str, cls_score: Tensor, label: Tensor,
                pos_weight: Tensor, neg_weight: Tensor,
                weight: Optional[Tensor], reduction: str,
                avg_factor) -> Tensor:
    """The loss of checked inputs, in float32 at least (autocast off)."""
    with dispatch.autocast_off(cls_score):
        dtype = compute_dtype(cls_score)
        x = to_dtype(cls_score, dtype)
        loss = eqlv2_elementwise_loss(x, label.long(),
                                      to_dtype(pos_weight, dtype),
                                      to_dtype(neg_weight, dtype))
        if weight is not None:
            weight = to_dtype(weight, dtype)
            loss = loss * (weight if weight.dim() == 2 else weight[:, None])
        # one loss per sample: 'mean' is mmdet's sum / N
        rule = Reduction(loss_name, None, reduction, avg_factor)
        return restore_loss(rule.apply(loss.sum(1)), cls_score,
                            rule.reduces)


def eqlv2_loss(cls_score: Tensor, label: Tensor, pos_weight: Tensor,
               neg_weight: Tensor, weight: OptTensor = None,
               reduction: str = 'mean',
               avg_factor: AvgFactor = None) -> Tensor:
    """EQLv2 loss for given class weights (see the module docstring).

    ``L_i = sum_j w_ij BCE(x_ij, t_ij)``, weighted by ``weight`` and reduced
    over the samples: ``'mean'`` is ``sum_i L_i / N`` (MMDetection's
    normaliser), or ``/ (avg_factor + eps)``.

    Args:
        cls_score (Tensor): (N, C) logits, the objectness channel last.
        label (Tensor): (N,) labels in ``[0, C)``.
        pos_weight, neg_weight (Tensor): (C,) channel weights
            (:func:`eqlv2_class_weights`).
        weight (Tensor, optional): (N,) per-sample or (N, C) weight.
        reduction (str): ``'none'`` ((N,) per-sample losses), ``'mean'`` or
            ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean.

    Returns:
        Tensor: the loss, float32 for half inputs, else ``cls_score``'s
        dtype.
    """
    name = 'eqlv2_loss'
    _check_inputs(name, cls_score, label, weight, reduction, avg_factor)
    for argument, value in (('pos_weight', pos_weight),
                            ('neg_weight', neg_weight)):
        check_float(name, argument, value)
        if value.shape != cls_score.shape[1:]:
            raise LossValueError(
                f'{name}: {argument} has shape '
                f'{tuple(value.shape)} but cls_score has shape '
                f'{tuple(cls_score.shape)}')
    return _eqlv2_loss(name, cls_score, label, pos_weight, neg_weight,
                       weight, reduction, avg_factor)


@MODELS.register_module()
class EQLV2Loss(BaseLoss):
    """Equalization loss v2, twin of mmdet's ``EQLV2Loss``.

    Paper: Tan et al., "Equalization Loss v2", CVPR 2021, https://arxiv.org/abs/2012.08548

    Keeps the buffers ``pos_grad``, ``neg_grad`` and ``pos_neg``
    (num_classes,) under MMDetection's names (checkpoints load either way)
    and updates them after every forward exactly as MMDetection does, but
    for a step with a NaN or Inf score: its loss is non-finite, and it
    leaves the statistics as they were (in MMDetection it makes them NaN
    for the rest of training; the check needs no host sync). The
    classifier has ``num_classes + 1`` channels (:meth:`get_channel_num`).

    As MMDetection's, the loss is always ``sum_i L_i / N``: ``weight``,
    ``avg_factor``, ``reduction``, ``reduction_override``, ``class_weight``
    and ``use_sigmoid`` are accepted and ignored, so an MMDetection config
    trains the same. A value that would change the loss if it were used
    (any ``weight`` or ``avg_factor``, a reduction other than ``'mean'``,
    a ``class_weight``, ``use_sigmoid`` not True) gives one
    ``UserWarning`` per module and argument, naming both.
    :func:`eqlv2_loss` is the functional form that applies them. Where
    MMDetection's value is not finite (no samples: ``0 / 0``) this gives a
    0 connected to the graph.

    Args:
        use_sigmoid (bool): ignored (always sigmoid), as in MMDetection.
        reduction (str): ignored (always ``sum / N``), as in MMDetection.
        class_weight: stored and ignored, as in MMDetection.
        loss_weight (float): factor applied to the loss.
        num_classes (int): 1203 for LVIS v1.0, 1230 for LVIS v0.5.
        use_distributed (bool): all-reduce the statistics over processes.
        mu (float): ratio at which the negative weight is 0.5.
        alpha (float): extra weight of rare classes' positives.
        gamma (int): slope of the mapping from ratio to weight.
        vis_grad (bool): kept for MMDetection's interface (unused).
        test_with_obj (bool): :meth:`get_activation` multiplies the class
            scores by ``1 - objectness``.
    """

    def __init__(self,
                 use_sigmoid: bool = True,
                 reduction: str = 'mean',
                 class_weight: Optional[Tensor] = None,
                 loss_weight: float = 1.0,
                 num_classes: int = 1203,
                 use_distributed: bool = False,
                 mu: float = 0.8,
                 alpha: float = 4.0,
                 gamma: int = 12,
                 vis_grad: bool = False,
                 test_with_obj: bool = True) -> None:
        super().__init__(reduction, loss_weight)
        name = self.loss_name
        if use_sigmoid is not True:
            self._warn_ignored('use_sigmoid', use_sigmoid,
                               'the loss is always the sigmoid form')
        if class_weight is not None:
            self._warn_ignored('class_weight', class_weight)
        if reduction != 'mean':
            self._warn_ignored('reduction', reduction,
                               'the loss is always sum / N')
        if isinstance(num_classes, bool) or not isinstance(
                num_classes, Integral) or num_classes <= 0:
            raise LossValueError(
                f'{name}: num_classes must be a positive int, '
                f'but got {num_classes!r}')
        self.use_sigmoid = True
        self.class_weight = class_weight
        self.num_classes = int(num_classes)
        self.use_distributed = bool(use_distributed)
        self.mu = float(mu)
        self.alpha = check_positive(name, 'alpha', alpha, allow_zero=True)
        self.gamma = check_positive(name, 'gamma', gamma, allow_zero=True)
        self.vis_grad = vis_grad
        self.test_with_obj = bool(test_with_obj)
        self.group = True
        self.register_buffer('pos_grad', torch.zeros(self.num_classes))
        self.register_buffer('neg_grad', torch.zeros(self.num_classes))
        self.register_buffer(
            'pos_neg', torch.full((self.num_classes, ), INITIAL_POS_NEG))

    def _warn_ignored(self, argument: str, value,
                      why: str = 'it is never used') -> None:
        self.warn_ignored(argument, value, why,
                          'mmloss.losses.eqlv2.eqlv2_loss')

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, num_classes={self.num_classes}, '
                f'mu={self.mu}, alpha={self.alpha}, gamma={self.gamma}')

    def get_channel_num(self, num_classes: int) -> int:
        """The classifier needs ``num_classes + 1`` channels."""
        return num_classes + 1

    def get_activation(self, pred: Tensor) -> Tensor:
        """Scores (N, C): sigmoids, the classes times ``1 - objectness``
        when ``test_with_obj``."""
        scores = pred.sigmoid()
        if not self.test_with_obj:
            return scores
        return torch.cat([scores[:, :-1] * (1 - scores[:, -1:]),
                          scores[:, -1:]], dim=1)

    def get_weight(self, pred: Tensor) -> Tuple[Tensor, Tensor]:
        """``(w+, w-)`` (C,) from the current ratios, ``pred``'s dtype (at
        least float32)."""
        pos_weight, neg_weight = eqlv2_class_weights(
            self.pos_neg, self.gamma, self.mu, self.alpha)
        dtype = torch.promote_types(compute_dtype(pred), pos_weight.dtype)
        return to_dtype(pos_weight, dtype), to_dtype(neg_weight, dtype)

    @torch.no_grad()
    def collect_grad(self, pred: Tensor, label: Tensor, pos_weight: Tensor,
                     neg_weight: Tensor) -> None:
        """Add this step's gradient magnitudes and refresh ``pos_neg``."""
        positive, negative = eqlv2_gradient_statistics(
            to_dtype(pred, pos_weight.dtype), label, pos_weight, neg_weight)
        # a non-finite score would make the statistics NaN for good: such a
        # step adds nothing (a where, not a branch: no host sync)
        finite = torch.isfinite(pred).all()
        positive = torch.where(finite, positive, 0.0)
        negative = torch.where(finite, negative, 0.0)
        if self.use_distributed and dist.is_available() and \
                dist.is_initialized():
            dist.all_reduce(positive)
            dist.all_reduce(negative)
        self.pos_grad += positive.to(self.pos_grad.dtype)
        self.neg_grad += negative.to(self.neg_grad.dtype)
        torch.div(self.pos_grad, self.neg_grad + RATIO_EPS,
                  out=self.pos_neg)

    def forward(self, cls_score: Tensor, label: Tensor,
                weight: OptTensor = None, avg_factor: AvgFactor = None,
                reduction_override: OptStr = None) -> Tensor:
        """The loss of this step, then the update of the statistics.

        Args:
            cls_score (Tensor): (N, num_classes + 1) logits.
            label (Tensor): (N,) labels in ``[0, num_classes]``
                (``num_classes``: the background), any integer dtype.
            weight (Tensor, optional): ignored, as in MMDetection.
            avg_factor (float | Tensor, optional): ignored, as in
                MMDetection.
            reduction_override (str, optional): ``None``, ``'none'``,
                ``'mean'`` or ``'sum'``; ignored, as in MMDetection.

        Returns:
            Tensor: the scalar loss ``sum_i L_i / N``; float32 for half
            inputs.
        """
        self.resolve_reduction(reduction_override)  # a valid name at least
        if weight is not None:
            self._warn_ignored('weight', weight)
        if avg_factor is not None:
            self._warn_ignored('avg_factor', avg_factor,
                               'the loss is always sum / N')
        if reduction_override not in (None, 'mean'):
            self._warn_ignored('reduction_override', reduction_override,
                               'the loss is always sum / N')
        _check_inputs(self.loss_name, cls_score, label, None, 'mean', None,
                      self.num_classes + 1)
        label = label.long()
        pos_weight, neg_weight = self.get_weight(cls_score)
        loss = _eqlv2_loss(self.loss_name, cls_score, label, pos_weight,
                           neg_weight, None, 'mean', None)
        self.collect_grad(cls_score.detach(), label, pos_weight, neg_weight)
        return self.apply_loss_weight(loss)
