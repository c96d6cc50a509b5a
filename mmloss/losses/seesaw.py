"""Seesaw loss: cross-entropy re-balanced for long-tailed classification.

Wang et al., "Seesaw Loss for Long-Tailed Instance Segmentation", CVPR 2021,
https://arxiv.org/abs/2008.10032.

For a sample of class ``l`` the logit of every other class ``j`` is shifted
by ``log S_lj`` before the softmax cross-entropy, ``S_lj = M_lj * C_lj``::

    M_lj = min(1, N_j / N_l) ** p            mitigation (N: cumulative counts,
                                             clamped to >= 1)
    C_lj = max(1, s_j / max(s_l, eps)) ** q  compensation (s = softmax(x),
                                             no gradient)

so ``log S_lj = p * min(0, log N_j - log N_l) + q * max(0, log s_j -
max(log s_l, log eps))``, which is 0 for ``j == l``. The fast path
(:func:`seesaw_rows`) computes everything in log space from the label
vector: no C x C ratio matrix and no one-hot; the plain formula
(:func:`seesaw_rows_plain`) builds the ratios term by term.

The compensation ``C_lj`` is a function of the scores, but the paper (and
MMDetection) treat it as a constant: it is computed from the *detached*
scores. Both paths detach it the same way, so their gradients and their
second derivatives (``create_graph=True``) agree, and are those of the
loss with ``C`` held fixed, not of the fully differentiated formula.
Shapes: class logits (N, C), labels (N,) in ``[0, C)``.

:class:`SeesawLoss` works on ``num_classes + 2`` channels (the classes and a
2-way objectness) and keeps the cumulative class counts ``cum_samples`` as a
registered buffer (saved in checkpoints, same key as MMDetection's). The
buffer holds int64 counts, exact whatever ``.half()`` or ``.to(dtype)`` do
to the module: MMDetection's float32 buffer gains nothing from ``+1`` past
``2^24`` (and a float16 one past 2048), so a long LVIS schedule would
freeze the counts. Float checkpoints (MMDetection's, older mmloss ones)
load into it, and it loads into MMDetection's module.

Dtypes: the loss computes in float32 at least; a reduced loss of half
inputs is returned in float32 (never ``inf`` for a value float32 holds),
the loss of ``reduction='none'`` in the input dtype.
"""
from numbers import Integral
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import (check_float, check_integer_labels, check_label_range,
                      check_positive, check_tensor)
from ..engine import dispatch
from ..errors import LossValueError
from ..precision import compute_dtype, loss_dtype, restore_loss, to_dtype
from ..reduction import Reduction
from ..registry import MODELS
from .base import BaseLoss
from .cross_entropy import (DEFAULT_IGNORE_INDEX,
                            softmax_cross_entropy_checked, softmax_fast_path,
                            top1_accuracy)

__all__ = ['seesaw_log_weights', 'seesaw_ce_loss', 'SeesawLoss']


def seesaw_log_weights(cls_score: Tensor, labels: Tensor,
                       cum_samples: Tensor, p: float, q: float,
                       eps: float) -> Tensor:
    """``log S`` (N, C): the logit shift of every class for every sample.

    Computed without gradient: the compensation factor is a function of the
    *detached* scores, as in the paper and MMDetection, and the mitigation
    factor is a constant of the class counts.

    Args:
        cls_score (Tensor): (N, C) class logits (only read, no gradient).
        labels (Tensor): (N,) labels in ``[0, C)``.
        cum_samples (Tensor): (C,) cumulative sample count per class.
        p (float): mitigation exponent (0 turns it off).
        q (float): compensation exponent (0 turns it off).
        eps (float): floor of the own-class score in the compensation.

    Returns:
        Tensor: (N, C) float, ``0`` at each sample's own class.
    """
    with torch.no_grad(), dispatch.autocast_off(cls_score):
        work = cls_score.detach().to(compute_dtype(cls_score))
        log_weights = work.new_zeros(work.shape)
        if p > 0:
            log_counts = cum_samples.to(work.dtype).clamp(min=1).log()
            log_weights += (log_counts[None, :] -
                            log_counts[labels][:, None]).clamp_(max=0) * p
        if q > 0:
            log_scores = work.log_softmax(dim=1)
            own = log_scores.gather(1, labels[:, None]).clamp(
                min=torch.log(work.new_tensor(eps)))
            log_weights += (log_scores - own).clamp_(min=0) * q
    return log_weights


def seesaw_rows_plain(cls_score: Tensor, labels: Tensor, cum_samples: Tensor,
                      p: float, q: float, eps: float) -> Tensor:
    """The paper's formula, term by term (the reference of the fast path).

    ``CE(x + log S * (1 - onehot))`` with the mitigation and compensation
    factors as ratios; the compensation reads the detached scores, exactly
    as :func:`seesaw_log_weights` (and the paper) does, so both paths have
    the same first and second derivatives.
    """
    num_classes = cls_score.size(1)
    onehot = F.one_hot(labels, num_classes).to(cls_score.dtype)
    factors = cls_score.new_ones(cls_score.shape)
    if p > 0:
        counts = cum_samples.to(cls_score.dtype).clamp(min=1)
        ratio = counts[None, :] / counts[labels][:, None]
        factors = factors * torch.where(ratio < 1, ratio.pow(p), 1.0)
    if q > 0:
        scores = F.softmax(cls_score.detach(), dim=1)
        own = scores.gather(1, labels[:, None]).clamp(min=eps)
        ratio = scores / own
        factors = factors * torch.where(ratio > 1, ratio.pow(q), 1.0)
    shifted = cls_score + factors.log() * (1 - onehot)
    return F.cross_entropy(shifted, labels, reduction='none')


def seesaw_rows(cls_score: Tensor, labels: Tensor, cum_samples: Tensor,
                p: float, q: float, eps: float) -> Tensor:
    """Per-sample seesaw CE (N,) in log space: ``CE(x + log S)`` with
    :func:`seesaw_log_weights` (detached compensation, as the paper), no
    C x C matrix and no one-hot. The same value, gradient and second
    derivatives as :func:`seesaw_rows_plain`."""
    shifted = cls_score + seesaw_log_weights(cls_score, labels, cum_samples,
                                             p, q, eps)
    return F.cross_entropy(shifted, labels, reduction='none')


def _seesaw_class_loss(loss_name: str, cls_score: Tensor, labels: Tensor,
                       label_weights: Optional[Tensor], cum_samples: Tensor,
                       p: float, q: float, eps: float, reduction: str,
                       avg_factor, fast: bool) -> Tensor:
    """Seesaw CE of checked inputs, weighted and reduced (in
    :func:`~mmloss.precision.loss_dtype`). The fast path is
    :func:`seesaw_rows` (log space), the plain one
    :func:`seesaw_rows_plain` (the paper's ratios, term by term); both are
    autograd graphs, so double backward is exact in both.

    (The softmax cross-entropy kernel is not used here: its exact double
    backward needs the shifted logits kept alive, an extra ``N x C``
    tensor, next to its gradient, where ``F.cross_entropy`` keeps one.)
    """
    with dispatch.autocast_off(cls_score):
        dtype = compute_dtype(cls_score)
        labels = labels.long()
        if label_weights is not None:
            label_weights = to_dtype(label_weights, dtype)
        rule = Reduction(loss_name, label_weights, reduction, avg_factor)
        x = to_dtype(cls_score, dtype)
        if fast and dispatch.use_fast('SeesawLoss', cls_score,
                                      rows=cls_score.size(0)):
            rows = seesaw_rows(x, labels, cum_samples, p, q, eps)
        else:
            rows = seesaw_rows_plain(x, labels, cum_samples, p, q, eps)
        return restore_loss(rule.apply(rows), cls_score, rule.reduces)


def _check_scores_and_labels(name: str, cls_score: Tensor, labels: Tensor,
                             label_weights: Optional[Tensor], reduction: str,
                             avg_factor) -> None:
    """The checks the function and the module share: the reduction,
    float scores, integer labels and per-label weights of labels' shape."""
    Reduction(name, None, reduction, avg_factor).checked()
    check_float(name, 'cls_score', cls_score)
    check_tensor(name, 'labels', labels)
    check_integer_labels(name, labels, 'labels')
    if label_weights is not None:
        check_tensor(name, 'label_weights', label_weights)
        if label_weights.shape != labels.shape:
            raise LossValueError(
                f'{name}: label_weights has shape '
                f'{tuple(label_weights.shape)} but labels has '
                f'shape {tuple(labels.shape)}')


def seesaw_ce_loss(cls_score: Tensor,
                   labels: Tensor,
                   label_weights: Optional[Tensor],
                   cum_samples: Tensor,
                   num_classes: int,
                   p: float,
                   q: float,
                   eps: float,
                   reduction: str = 'mean',
                   avg_factor: Optional[Union[float, Tensor]] = None,
                   fast: bool = True) -> Tensor:
    """Seesaw cross-entropy of class logits (see the module docstring).

    Args:
        cls_score (Tensor): (N, num_classes) logits.
        labels (Tensor): (N,) labels in ``[0, num_classes)``.
        label_weights (Tensor, optional): (N,) per-sample weight.
        cum_samples (Tensor): (num_classes,) cumulative counts.
        num_classes (int): number of classes.
        p, q, eps (float): see :func:`seesaw_log_weights`.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean.
        fast (bool): allow the fast path (the log-space shift, as the
            dispatcher decides); ``False`` runs the term-by-term formula.

    Returns:
        Tensor: the loss: ``'none'`` in ``cls_score``'s dtype, ``'mean'``
        and ``'sum'`` in float32 at least (float32 for half scores).
    """
    name = 'seesaw_ce_loss'
    check_tensor(name, 'cum_samples', cum_samples)
    _check_scores_and_labels(name, cls_score, labels, label_weights,
                             reduction, avg_factor)
    if cls_score.dim() != 2 or cls_score.size(-1) != num_classes or \
            cum_samples.shape != (num_classes, ) or \
            labels.shape != cls_score.shape[:1]:
        raise LossValueError(
            f'{name}: cls_score has shape {tuple(cls_score.shape)}, labels '
            f'{tuple(labels.shape)} and cum_samples '
            f'{tuple(cum_samples.shape)}, but num_classes is {num_classes} '
            f'(cls_score must be (N, num_classes), labels (N,), '
            f'cum_samples (num_classes,))')
    # int64: a uint8 label compared with a class count above 255 wraps
    check_label_range(name, to_dtype(labels, torch.int64), num_classes,
                      argument='labels')
    return _seesaw_class_loss(name, cls_score, labels, label_weights,
                              cum_samples, p, q, eps, reduction, avg_factor,
                              fast)


@MODELS.register_module()
class SeesawLoss(BaseLoss):
    """Seesaw loss with a 2-way objectness branch (MMDetection 3.3's twin).

    Paper: Wang et al., "Seesaw Loss for Long-Tailed Instance Segmentation", CVPR 2021, https://arxiv.org/abs/2008.10032

    The classifier has ``num_classes + 2`` channels: the class logits, then
    (object, background) logits. Labels lie in ``[0, num_classes]``, with
    ``num_classes`` the background. The class term covers the foreground
    samples only; the objectness term is a softmax CE over all samples.

    Args:
        use_sigmoid (bool): must be False (only softmax is defined).
        p (float): mitigation exponent. Defaults to 0.8.
        q (float): compensation exponent. Defaults to 2.0.
        num_classes (int): foreground classes (1203 for LVIS v1).
        eps (float): floor of the own-class score. Defaults to 1e-2.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): factor applied to both terms.
        return_dict (bool): return ``{'loss_cls_objectness',
            'loss_cls_classes'}`` instead of their sum.
    """

    def __init__(self,
                 use_sigmoid: bool = False,
                 p: float = 0.8,
                 q: float = 2.0,
                 num_classes: int = 1203,
                 eps: float = 1e-2,
                 reduction: str = 'mean',
                 loss_weight: float = 1.0,
                 return_dict: bool = True) -> None:
        super().__init__(reduction, loss_weight)
        if use_sigmoid:
            raise LossValueError(f'{self.loss_name}: use_sigmoid=True is not '
                                 'supported, only softmax')
        if isinstance(num_classes, bool) or not isinstance(
                num_classes, Integral) or num_classes <= 0:
            raise LossValueError(f'{self.loss_name}: num_classes must be a '
                                 f'positive int, but got {num_classes!r}')
        self.use_sigmoid = False
        self.p = check_positive(self.loss_name, 'p', p, allow_zero=True)
        self.q = check_positive(self.loss_name, 'q', q, allow_zero=True)
        self.eps = check_positive(self.loss_name, 'eps', eps)
        self.num_classes = int(num_classes)
        self.return_dict = bool(return_dict)
        # cumulative samples per label (the background last); persistent,
        # so a resumed run continues the same re-balancing. int64: exact
        # counts, untouched by .half() / .to(dtype) (see the module doc)
        self.register_buffer(
            'cum_samples', torch.zeros(self.num_classes + 1,
                                       dtype=torch.int64))
        self.custom_cls_channels = True
        self.custom_activation = True
        self.custom_accuracy = True

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, p={self.p}, q={self.q}, '
                f'num_classes={self.num_classes}, eps={self.eps}')

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # MMDetection's (and older mmloss) checkpoints hold float counts:
        # load them as int64 counts, with load_state_dict(assign=True) too
        key = prefix + 'cum_samples'
        counts = state_dict.get(key)
        if isinstance(counts, Tensor) and counts.is_floating_point():
            state_dict[key] = counts.round().to(torch.int64)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _split_cls_score(self, cls_score: Tensor) -> Tuple[Tensor, Tensor]:
        """(..., C + 2) -> class logits (..., C), objectness (..., 2)."""
        if cls_score.size(-1) != self.num_classes + 2:
            raise LossValueError(
                f'{self.loss_name}: cls_score must have num_classes + 2 = '
                f'{self.num_classes + 2} channels, but has shape '
                f'{tuple(cls_score.shape)}')
        return cls_score[..., :-2], cls_score[..., -2:]

    def get_cls_channels(self, num_classes: int) -> int:
        """The classifier needs ``num_classes + 2`` channels."""
        if num_classes != self.num_classes:
            raise LossValueError(
                f'{self.loss_name}: the head has {num_classes} '
                f'classes but the loss {self.num_classes}')
        return num_classes + 2

    def get_activation(self, cls_score: Tensor) -> Tensor:
        """Scores (..., C + 1): ``softmax(classes) * P(object)``, then
        ``P(background)``."""
        classes, objectness = self._split_cls_score(cls_score)
        objectness = F.softmax(objectness, dim=-1)
        return torch.cat([
            F.softmax(classes, dim=-1) * objectness[..., :1],
            objectness[..., 1:]
        ], dim=-1)

    def get_accuracy(self, cls_score: Tensor,
                     labels: Tensor) -> Dict[str, Tensor]:
        """Top-1 accuracy of the objectness and of the foreground classes."""
        positive = labels < self.num_classes
        classes, objectness = self._split_cls_score(cls_score)
        return dict(
            acc_objectness=top1_accuracy(
                objectness, (labels == self.num_classes).long()),
            acc_classes=top1_accuracy(classes[positive], labels[positive]))

    def _check_inputs(self, cls_score: Tensor, labels: Tensor,
                      label_weights: Optional[Tensor], reduction: str,
                      avg_factor) -> None:
        """The one validator of a call (before ``cum_samples`` counts it).
        """
        name = self.loss_name
        _check_scores_and_labels(name, cls_score, labels, label_weights,
                                 reduction, avg_factor)
        if cls_score.dim() != 2 or cls_score.size(1) != self.num_classes + 2:
            raise LossValueError(
                f'{name}: cls_score must have shape (N, num_classes + 2 = '
                f'{self.num_classes + 2}), but has shape '
                f'{tuple(cls_score.shape)}')
        if labels.shape != cls_score.shape[:1]:
            raise LossValueError(
                f'{name}: cls_score has shape '
                f'{tuple(cls_score.shape)} but labels has shape '
                f'{tuple(labels.shape)}')
        check_label_range(name, to_dtype(labels, torch.int64),
                          self.num_classes, high_inclusive=True,
                          argument='labels')

    def _class_loss(self, classes: Tensor, labels: Tensor,
                    label_weights: Tensor, reduction: str,
                    avg_factor) -> Tensor:
        """Seesaw CE over the foreground samples only.

        Selecting them costs one host sync (MMDetection syncs once per
        distinct label), but keeps only foreground rows for backward.
        """
        index = (labels < self.num_classes).nonzero().squeeze(1)
        if index.numel() == 0:
            # MMDetection's value here: the sum of no rows
            return to_dtype(classes[index].sum(),
                            loss_dtype(classes, reduction != 'none'))
        return self.apply_loss_weight(_seesaw_class_loss(
            self.loss_name, classes[index], labels[index],
            label_weights[index], self.cum_samples[:self.num_classes],
            self.p, self.q, self.eps, reduction, avg_factor, True))

    def forward(
        self,
        cls_score: Tensor,
        labels: Tensor,
        label_weights: Optional[Tensor] = None,
        avg_factor: Optional[Union[float, Tensor]] = None,
        reduction_override: Optional[str] = None
    ) -> Union[Tensor, Dict[str, Tensor]]:
        """Compute the loss and update ``cum_samples`` with ``labels``.

        Args:
            cls_score (Tensor): (N, num_classes + 2) logits.
            labels (Tensor): (N,) labels in ``[0, num_classes]``.
            label_weights (Tensor, optional): (N,) per-sample weight.
            avg_factor (float | Tensor, optional): denominator of the mean.
            reduction_override (str, optional): reduction for this call.

        Returns:
            Tensor | dict: the summed loss, or the two terms by name if
            ``return_dict``.
        """
        reduction = self.resolve_reduction(reduction_override)
        self._check_inputs(cls_score, labels, label_weights, reduction,
                           avg_factor)
        labels = to_dtype(labels, torch.int64)
        # count before computing, as MMDetection does: one scatter of the
        # batch's totals into the int64 counts (exact, never saturating)
        self.cum_samples.add_(torch.zeros_like(self.cum_samples).index_add_(
            0, labels, torch.ones_like(labels,
                                       dtype=self.cum_samples.dtype)))
        if label_weights is None:
            label_weights = labels.new_ones(labels.shape, dtype=torch.float)
        else:
            label_weights = label_weights.float()
        classes, objectness = self._split_cls_score(cls_score)
        loss_classes = self._class_loss(classes, labels, label_weights,
                                        reduction, avg_factor)
        loss_objectness = self.apply_loss_weight(
            softmax_cross_entropy_checked(
                self.loss_name, objectness,
                (labels == self.num_classes).long(), label_weights,
                reduction, avg_factor, None, DEFAULT_IGNORE_INDEX, False,
                softmax_fast_path(objectness, None, True)))
        if self.return_dict:
            return dict(loss_cls_objectness=loss_objectness,
                        loss_cls_classes=loss_classes)
        return loss_classes + loss_objectness
