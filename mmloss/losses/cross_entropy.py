"""Cross-entropy losses: softmax, sigmoid (binary) and per-class mask CE.

Softmax cross-entropy of logits ``x`` (N, C) and a class index ``l``::

    loss_i = w_c[l_i] * (logsumexp_j x_ij - x_il_i)   (0 if l_i is ignored)

Binary (sigmoid) cross-entropy of logits ``x`` and a 0/1 target ``y``, with
the per-class positive weight ``p_j`` (``class_weight``)::

    loss_ij = p_j * y_ij * softplus(-x_ij) + (1 - y_ij) * softplus(x_ij)

With integer labels (N,) against logits (N, C), ``y`` is the one-hot of the
label; labels ``>= C`` (background) give an all-zero row and negative labels
or ``ignore_index`` give a zero-weight row, exactly as MMDetection 3.3 does.

Speed: the softmax path runs through :class:`SoftmaxCrossEntropyFunction`
(one softmax, turned into the gradient in place and saved; the reduction
fused in) from :data:`FUSED_SOFTMAX_MIN_ELEMENTS` logits up (below that
``F.cross_entropy``'s single fused kernel is faster) and the
integer-label sigmoid path (reductions ``'mean'``/``'sum'``) through
:class:`SigmoidOneHotCrossEntropyFunction`, which saves only the logits and
never builds the one-hot target. The plain formulas stay available with
``fast=False``.
"""
import warnings
from numbers import Integral, Real
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..checks import (check_avg_factor, check_integer_labels,
                      check_label_range, check_tensor,
                      check_weight_shape)
from ..gradients import scale_saved_grad
from ..precision import compute_dtype, to_dtype
from ..reduction import (FLOAT32_EPS, reduce_weighted_sum,
                         weight_reduce_loss)
from ..registry import MODELS
from .base import BaseLoss

__all__ = [
    'softmax_cross_entropy', 'binary_cross_entropy', 'accurate_neg_log',
    'mask_cross_entropy', 'top1_accuracy', 'SoftmaxCrossEntropyFunction',
    'SigmoidOneHotCrossEntropyFunction', 'CrossEntropyLoss',
    'CrossEntropyCustomLoss'
]

# PyTorch's (and MMDetection's) default label to ignore.
DEFAULT_IGNORE_INDEX = -100

#: Softmax logits with fewer elements than this take ``F.cross_entropy``
#: even with ``fast=True``: for a few thousand rows (a RoI head's 512 x 81
#: scores, say) the per-op overhead of :class:`SoftmaxCrossEntropyFunction`
#: outweighs what it saves, and ATen's fused kernel is faster (measured on
#: 2 CPU threads: 0.12 vs 0.20 ms at 1000 x 81, 1.4 vs 0.5 ms at 4000 x 81).
FUSED_SOFTMAX_MIN_ELEMENTS = 1 << 17


# --------------------------------------------------------------------------
# Softmax cross-entropy
# --------------------------------------------------------------------------
class SoftmaxCrossEntropyFunction(torch.autograd.Function):
    """Weighted row losses ``f_i (logsumexp(x_i) - x_il_i)``, gradient in
    forward.

    ``f_i`` is the row factor (``weight_i * class_weight[l_i]``, 0 where
    ``l_i`` is ``ignore_index``). The forward pass runs one softmax ``p`` and
    turns it, in place, into the gradient of the unweighted row loss,
    ``p - onehot(l)`` (``scatter_add_`` at the N label entries); the loss is
    ``-log p_il``. That buffer and the (N,) factors are all that is saved;
    backward is one pass, ``(p - onehot) * f * grad``. ``F.cross_entropy``
    instead saves a log-softmax, then fills a dense one-hot gradient and
    runs the log-softmax backward over it.

    Where ``p_il`` is too small for ``-log p_il`` to be accurate (the label
    logit more than ~69 below the row's largest), the loss is
    ``logsumexp - x_il`` from the logits. On the CPU only those rows are
    recomputed (reading the flag costs nothing there); on an accelerator
    every row's ``logsumexp`` is computed and selected, so no step waits on
    the device. Half inputs are computed in float32.

    Args (of ``apply``):
        logits (Tensor): (N, C), C >= 1.
        label (Tensor): (N,) integer labels in ``[0, C)`` or
            ``ignore_index``.
        ignore_index (int): label of the rows to ignore.
        row_weight (Tensor, optional): (N,) factor per row (no gradient
            flows to it); None means 1.
        reduce_sum (bool): return the sum of the row losses.

    Returns:
        Tensor: (N,) weighted row losses, or their sum if ``reduce_sum``;
        float32 for half ``logits``, else their dtype.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, label: Tensor, ignore_index: int,
                row_weight: Optional[Tensor], reduce_sum: bool) -> Tensor:
        dtype = compute_dtype(logits)
        work = to_dtype(logits, dtype)
        num_rows, num_classes = work.shape
        valid = label != ignore_index
        # an ignored row may point at any column: clamp instead of select
        column = label.clamp(0, num_classes - 1).unsqueeze(1)
        grad = torch.softmax(work, dim=1)
        picked = grad.gather(1, column).squeeze(1)
        loss = accurate_neg_log(picked, work, column,
                                rows_only=work.device.type == 'cpu')
        if row_weight is None:
            factor = valid.to(dtype)
        else:
            row_weight = to_dtype(row_weight, dtype)
            factor = torch.where(valid, row_weight, 0.0)
            loss = loss * row_weight
        # select, so that an ignored row's value (even inf) never gives NaN
        loss = torch.where(valid, loss, 0.0)
        if ctx.needs_input_grad[0]:
            # p - onehot(l): subtract 1 at the N label entries
            grad.scatter_add_(1, column, grad.new_full((num_rows, 1), -1.0))
            ctx.save_for_backward(to_dtype(grad, logits.dtype), factor)
        return loss.sum() if reduce_sum else loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        grad, factor = ctx.saved_tensors
        return (scale_saved_grad(grad, grad_out, row_factor=factor), None,
                None, None, None)


# -log p is exact to float32 rounding above this; below it p has lost bits
_SMALLEST_ACCURATE_PROB = 1e-30


def accurate_neg_log(picked: Tensor, logits: Tensor, column: Tensor,
                     rows_only: bool) -> Tensor:
    """``-log(picked)``, recomputed as ``logsumexp - logit`` where
    ``picked`` (a softmax entry) is too small to be accurate.

    Args:
        picked (Tensor): (N,) softmax entries, ``softmax(logits)`` at
            ``column``.
        logits (Tensor): (N, C).
        column (Tensor): (N, 1) column of each picked entry.
        rows_only (bool): recompute only the rows that need it (reads a flag
            on the host: for CPU tensors), else compute every row's
            ``logsumexp`` and select (no host sync).
    """
    loss = torch.log(picked).neg_()
    tiny = picked < _SMALLEST_ACCURATE_PROB
    if rows_only:
        if bool(tiny.any()):
            rows = tiny.nonzero().squeeze(1)
            sub = logits[rows]
            loss[rows] = torch.logsumexp(sub, dim=1) - \
                sub.gather(1, column[rows]).squeeze(1)
        return loss
    exact = torch.logsumexp(logits, dim=1) - \
        logits.gather(1, column).squeeze(1)
    return torch.where(tiny, exact, loss)


def softmax_cross_entropy(pred: Tensor,
                          label: Tensor,
                          weight: Optional[Tensor] = None,
                          reduction: str = 'mean',
                          avg_factor: Optional[Union[float, Tensor]] = None,
                          class_weight: Optional[Tensor] = None,
                          ignore_index: Optional[int] = DEFAULT_IGNORE_INDEX,
                          avg_non_ignore: bool = False,
                          fast: bool = True) -> Tensor:
    """Softmax cross-entropy, weighted and reduced as MMDetection does.

    MMDetection calls this ``cross_entropy`` (an alias here that is not
    exported: the name would shadow this module in ``mmloss.losses``).
    Element-wise ``loss_i = class_weight[l_i] * (logsumexp_j x_ij - x_il_i)``,
    0 where ``l_i == ignore_index``. It is multiplied
    by ``weight`` and reduced by :func:`~mmloss.reduction.weight_reduce_loss`.
    ``'mean'`` divides by the number of elements (ignored ones included)
    unless ``avg_non_ignore`` is set, which divides by the number of labels
    that are not ``ignore_index`` (0 of them gives ``0``, not ``NaN``).

    Args:
        pred (Tensor): logits (N, C) or (N, C, d1, ...).
        label (Tensor): int64 labels (N,) or (N, d1, ...).
        weight (Tensor, optional): per-element weight, shaped like ``label``.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean.
        class_weight (Tensor, optional): (C,) per-class weight.
        ignore_index (int, optional): ignored label; ``None`` means -100.
        avg_non_ignore (bool): average over the non-ignored labels only.
        fast (bool): :class:`SoftmaxCrossEntropyFunction` for 2-D logits
            of at least :data:`FUSED_SOFTMAX_MIN_ELEMENTS` elements (smaller
            ones run ``F.cross_entropy``, faster there; same result).

    Returns:
        Tensor: the reduced loss.
    """
    ignore_index = DEFAULT_IGNORE_INDEX if ignore_index is None \
        else ignore_index
    dtype = compute_dtype(pred)
    if avg_factor is None and avg_non_ignore and reduction == 'mean':
        # a tensor, so no host sync (MMDetection calls .item() here)
        avg_factor = label.numel() - (label == ignore_index).sum()
    if weight is not None:
        weight = weight.to(dtype)
    if class_weight is not None:
        class_weight = class_weight.to(dtype)

    if fast and pred.dim() == 2 and pred.size(1) > 0 and \
            pred.numel() >= FUSED_SOFTMAX_MIN_ELEMENTS and not (
            weight is not None and weight.requires_grad) and not (
                class_weight is not None and class_weight.requires_grad):
        row_weight = None if weight is None else weight.reshape(-1)
        if class_weight is not None:
            picked = class_weight[torch.where(label != ignore_index, label,
                                              0)]
            row_weight = picked if row_weight is None else \
                row_weight * picked
        if reduction == 'none':
            return SoftmaxCrossEntropyFunction.apply(
                pred, label, ignore_index, row_weight, False).to(pred.dtype)
        total = SoftmaxCrossEntropyFunction.apply(pred, label, ignore_index,
                                                  row_weight, True)
        return reduce_weighted_sum('softmax_cross_entropy', total,
                                   label.numel(), reduction,
                                   avg_factor).to(pred.dtype)

    loss = F.cross_entropy(pred.to(dtype), label, weight=class_weight,
                           reduction='none', ignore_index=ignore_index)
    return weight_reduce_loss(loss, weight, reduction,
                              avg_factor).to(pred.dtype)


cross_entropy = softmax_cross_entropy


# --------------------------------------------------------------------------
# Binary (sigmoid) cross-entropy
# --------------------------------------------------------------------------
class SigmoidOneHotCrossEntropyFunction(torch.autograd.Function):
    """Row sums of sigmoid BCE against the one-hot of integer labels.

    ``row_i = sum_j softplus(x_ij) + [0 <= l_i < C] * (p_l softplus(-x_il)
    - softplus(x_il))``. The one-hot target is never built; backward is
    ``sigmoid(x)`` with the label column replaced by ``-p_l sigmoid(-x_il)``,
    rebuilt from the saved logits alone.

    Args (of ``apply``):
        logits (Tensor): (N, C).
        label (Tensor): (N,) int64; labels outside ``[0, C)`` are negatives.
        pos_weight (Tensor, optional): (C,) weight of the positive term.

    Returns:
        Tensor: (N,) row sums, float32 for half ``logits``.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, label: Tensor,
                pos_weight: Optional[Tensor]) -> Tensor:
        work = logits.to(compute_dtype(logits))
        num_classes = work.size(1)
        positive = (label >= 0) & (label < num_classes)
        column = torch.where(positive, label, 0).long()[:, None]
        rows = F.softplus(work).sum(1)
        picked = work.gather(1, column).squeeze(1)
        pos_term = F.softplus(-picked)
        if pos_weight is not None:
            pos_term = pos_term * pos_weight.to(work.dtype)[column.squeeze(1)]
        rows = rows + torch.where(positive, pos_term - F.softplus(picked),
                                  rows.new_zeros(()))
        ctx.save_for_backward(logits, column, positive, pos_weight)
        return rows

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, column, positive, pos_weight = ctx.saved_tensors
        work_dtype = compute_dtype(logits)
        grad_out = grad_out.to(work_dtype)[:, None]
        grad = logits.to(work_dtype).sigmoid()
        picked = grad.gather(1, column)
        pos_grad = picked - 1
        if pos_weight is not None:
            pos_grad = pos_grad * pos_weight.to(work_dtype)[column]
        grad.mul_(grad_out)
        grad.scatter_(1, column, torch.where(
            positive[:, None], pos_grad, picked) * grad_out)
        return grad.to(logits.dtype), None, None


def _expand_onehot_weights(label: Tensor, weight: Optional[Tensor],
                           ignore_index: int, dtype: torch.dtype):
    """Per-row weight of the one-hot expansion: ``weight * valid``."""
    valid = ((label >= 0) & (label != ignore_index)).to(dtype)
    if weight is None:
        return valid, valid
    return weight.reshape(-1).to(dtype) * valid, valid


def binary_cross_entropy(pred: Tensor,
                         label: Tensor,
                         weight: Optional[Tensor] = None,
                         reduction: str = 'mean',
                         avg_factor: Optional[Union[float, Tensor]] = None,
                         class_weight: Optional[Tensor] = None,
                         ignore_index: Optional[int] = DEFAULT_IGNORE_INDEX,
                         avg_non_ignore: bool = False,
                         fast: bool = True) -> Tensor:
    """Sigmoid (binary) cross-entropy with MMDetection's label semantics.

    * ``pred`` (N, C) with integer ``label`` (N,): the target is the one-hot
      of ``label`` (labels ``>= C`` give an all-zero row); the weight of row
      ``i`` is ``weight_i * valid_i`` with ``valid_i = label_i >= 0 and
      label_i != ignore_index``. ``avg_non_ignore`` averages over
      ``C * sum(valid)`` elements.
    * ``pred`` and ``label`` with the same number of dims: ``label`` is the
      (possibly soft) target itself; elements with ``label < 0`` or
      ``label == ignore_index`` get weight 0.

    Element-wise: ``p_j y softplus(-x) + (1 - y) softplus(x)`` with
    ``p = class_weight`` (the positive weight per class, default 1).

    Args:
        pred (Tensor): logits (N, C) or any shape matching ``label``.
        label (Tensor): int labels (N,) or targets shaped like ``pred``.
        weight (Tensor, optional): (N,) row weight for the one-hot case,
            otherwise broadcastable to ``pred``.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean.
        class_weight (Tensor, optional): (C,) positive weight per class.
        ignore_index (int, optional): ignored label; ``None`` means -100.
        avg_non_ignore (bool): average over non-ignored elements only.
        fast (bool): for the one-hot case with ``'mean'``/``'sum'``, use
            :class:`SigmoidOneHotCrossEntropyFunction` (no one-hot tensor).

    Returns:
        Tensor: the reduced loss, dtype of ``pred``.
    """
    ignore_index = DEFAULT_IGNORE_INDEX if ignore_index is None \
        else ignore_index
    work_dtype = compute_dtype(pred)
    if pred.dim() != label.dim():
        num_classes = pred.size(-1)
        row_weight, valid = _expand_onehot_weights(label, weight,
                                                   ignore_index, work_dtype)
        if avg_factor is None and avg_non_ignore and reduction == 'mean':
            avg_factor = valid.sum() * num_classes
        if fast and reduction != 'none':
            rows = SigmoidOneHotCrossEntropyFunction.apply(
                pred, label, class_weight)
            total = (rows * row_weight).sum()
            if reduction == 'sum':
                if avg_factor is not None:
                    # the same error weight_reduce_loss raises
                    return weight_reduce_loss(rows, None, 'sum', avg_factor)
                return total.to(pred.dtype)
            if avg_factor is None:
                count = pred.numel()
                return (total / count if count else total).to(pred.dtype)
            return (total / (avg_factor + FLOAT32_EPS)).to(pred.dtype)
        target = torch.zeros(pred.shape, dtype=work_dtype,
                             device=pred.device)
        positive = (label >= 0) & (label < num_classes)
        target.scatter_(1, torch.where(positive, label, 0).long()[:, None],
                        positive.to(work_dtype)[:, None])
        elem_weight = row_weight[:, None]
    else:
        target = label.to(work_dtype)
        valid = ((label >= 0) & (label != ignore_index)).to(work_dtype)
        elem_weight = valid if weight is None else \
            weight.to(work_dtype) * valid
        if avg_factor is None and avg_non_ignore and reduction == 'mean':
            avg_factor = valid.sum()
    if class_weight is not None:
        class_weight = class_weight.to(work_dtype)
    loss = F.binary_cross_entropy_with_logits(
        pred.to(work_dtype), target, pos_weight=class_weight,
        reduction='none')
    return weight_reduce_loss(loss, elem_weight, reduction,
                              avg_factor).to(pred.dtype)


# --------------------------------------------------------------------------
# Mask cross-entropy
# --------------------------------------------------------------------------
def mask_cross_entropy(pred: Tensor,
                       target: Tensor,
                       label: Tensor,
                       reduction: str = 'mean',
                       avg_factor: Optional[Union[float, Tensor]] = None,
                       class_weight: Optional[Tensor] = None,
                       ignore_index: Optional[int] = None) -> Tensor:
    """Binary cross-entropy of each RoI's mask for its own class.

    ``mean_{i,h,w} cw * BCE(pred[i, label_i, h, w], target[i, h, w])``,
    returned with shape (1,) as MMDetection does; ``class_weight`` is
    broadcast over the (N, H, W) element-wise loss like MMDetection's.
    Only ``reduction='mean'`` without ``avg_factor`` or ``ignore_index`` is
    defined (as in MMDetection). No RoIs give ``0`` (MMDetection: ``NaN``).

    Args:
        pred (Tensor): mask logits (N, C, H, W).
        target (Tensor): mask targets (N, H, W) in [0, 1].
        label (Tensor): (N,) class of each RoI.

    Returns:
        Tensor: (1,) loss.
    """
    if reduction != 'mean' or avg_factor is not None \
            or ignore_index is not None:
        raise ValueError(
            'mask_cross_entropy: only reduction="mean" without avg_factor '
            f'and ignore_index is supported, but got reduction={reduction!r}'
            f', avg_factor={avg_factor!r}, ignore_index={ignore_index!r}')
    work_dtype = compute_dtype(pred)
    rows = torch.arange(pred.size(0), device=pred.device)
    picked = pred[rows, label.long()].to(work_dtype)
    loss = F.binary_cross_entropy_with_logits(
        picked, target.to(work_dtype), reduction='none')
    if class_weight is not None:
        loss = loss * class_weight.to(work_dtype)
    return weight_reduce_loss(loss, None, 'mean').to(pred.dtype)[None]


def top1_accuracy(pred: Tensor, target: Tensor) -> Tensor:
    """Top-1 accuracy in percent, shape (1,) (``0.`` for no samples).

    Args:
        pred (Tensor): (N, C) scores.
        target (Tensor): (N,) class indices.
    """
    if pred.size(0) == 0:
        return pred.new_tensor(0.)
    correct = (pred.argmax(dim=1) == target).float().sum(0, keepdim=True)
    return correct * (100.0 / pred.size(0))


# --------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------
def _check_class_weight(loss_name: str, class_weight) -> Optional[list]:
    if class_weight is None:
        return None
    if isinstance(class_weight, Tensor):
        class_weight = class_weight.tolist()
    if not isinstance(class_weight, Sequence) or isinstance(
            class_weight, str) or not all(
                isinstance(w, Real) and not isinstance(w, bool)
                for w in class_weight):
        raise TypeError(f'{loss_name}: class_weight must be a list of '
                        f'numbers or None, but got {class_weight!r}')
    return [float(w) for w in class_weight]


def _check_ignore_index(loss_name: str, ignore_index) -> Optional[int]:
    if ignore_index is not None and (isinstance(ignore_index, bool) or
                                     not isinstance(ignore_index, Integral)):
        raise TypeError(f'{loss_name}: ignore_index must be an int or None, '
                        f'but got {ignore_index!r}')
    return ignore_index


@MODELS.register_module()
class CrossEntropyLoss(BaseLoss):
    """Softmax, sigmoid or mask cross-entropy (MMDetection 3.3's twin).

    Paper: none (the classical cross-entropy)

    Args:
        use_sigmoid (bool): sigmoid (binary) instead of softmax CE.
        use_mask (bool): per-RoI mask CE (:func:`mask_cross_entropy`); the
            ``weight`` argument of ``forward`` is then the RoI class labels.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        class_weight (list[float], optional): per-class weight (softmax) or
            positive weight (sigmoid).
        ignore_index (int, optional): ignored label (``None``: -100).
        loss_weight (float): factor applied to the loss.
        avg_non_ignore (bool): average over non-ignored labels only.
    """

    def __init__(self,
                 use_sigmoid: bool = False,
                 use_mask: bool = False,
                 reduction: str = 'mean',
                 class_weight: Optional[Sequence[float]] = None,
                 ignore_index: Optional[int] = None,
                 loss_weight: float = 1.0,
                 avg_non_ignore: bool = False):
        super().__init__(reduction, loss_weight)
        if use_sigmoid and use_mask:
            raise ValueError(f'{self.loss_name}: use_sigmoid and use_mask '
                             'can not both be True')
        self.use_sigmoid = bool(use_sigmoid)
        self.use_mask = bool(use_mask)
        self.class_weight = _check_class_weight(self.loss_name, class_weight)
        self.ignore_index = _check_ignore_index(self.loss_name, ignore_index)
        self.avg_non_ignore = bool(avg_non_ignore)
        if self.use_mask and self.ignore_index is not None:
            raise ValueError(f'{self.loss_name}: use_mask does not support '
                             f'ignore_index, but got {ignore_index!r}')
        if (self.ignore_index is not None and not self.avg_non_ignore
                and self.reduction == 'mean'):
            # the same advice MMDetection gives in this case
            warnings.warn(
                f'{self.loss_name}: with ignore_index set and '
                'avg_non_ignore=False the mean counts ignored labels too; '
                'set avg_non_ignore=True to average over non-ignored labels '
                'only, as torch.nn.functional.cross_entropy does.')
        # a device-following copy, so forward does no host-to-device copy
        self.register_buffer(
            'class_weight_tensor',
            None if self.class_weight is None else torch.tensor(
                self.class_weight, dtype=torch.float32),
            persistent=False)

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, use_sigmoid={self.use_sigmoid}, '
                f'use_mask={self.use_mask}, '
                f'avg_non_ignore={self.avg_non_ignore}')

    def _check_inputs(self, cls_score: Tensor, label: Tensor,
                      weight: Optional[Tensor], ignore_index: int) -> None:
        """Shapes, dtypes and label range; the one validator of the family."""
        name = self.loss_name
        check_tensor(name, 'cls_score', cls_score)
        check_tensor(name, 'label', label)
        if self.use_mask:
            check_tensor(name, 'weight (the RoI labels)', weight)
            check_integer_labels(name, weight, 'weight (the RoI labels)')
            if cls_score.dim() != 4 or label.dim() != 3 or \
                    label.shape[0] != cls_score.shape[0] or \
                    label.shape[1:] != cls_score.shape[2:] or \
                    weight.shape != cls_score.shape[:1]:
                raise ValueError(
                    f'{name}: with use_mask, cls_score must be (N, C, H, W), '
                    'label (N, H, W) and weight (N,), but got '
                    f'{tuple(cls_score.shape)}, {tuple(label.shape)} and '
                    f'{tuple(weight.shape)}')
            check_label_range(name, weight, cls_score.size(1),
                              argument='weight (the RoI labels)')
            return
        if cls_score.dim() == 0:
            raise ValueError(f'{name}: cls_score must have a class dim, but '
                             'has shape ()')
        num_classes = cls_score.size(1 if not self.use_sigmoid else -1)
        if self.use_sigmoid and cls_score.dim() == label.dim():
            if cls_score.shape != label.shape:
                raise ValueError(
                    f'{name}: cls_score has shape {tuple(cls_score.shape)} '
                    f'but label has shape {tuple(label.shape)}')
            check_weight_shape(name, weight, cls_score.shape)
            loss_shape = cls_score.shape
        elif self.use_sigmoid:
            check_integer_labels(name, label, 'label')
            if cls_score.dim() != 2 or label.dim() != 1 or \
                    label.shape[0] != cls_score.shape[0]:
                raise ValueError(
                    f'{name}: with integer labels cls_score must be (N, C) '
                    f'and label (N,), but got {tuple(cls_score.shape)} and '
                    f'{tuple(label.shape)}')
            if weight is not None and (
                    check_tensor(name, 'weight', weight).numel() !=
                    label.numel()):
                raise ValueError(
                    f'{name}: weight has shape {tuple(weight.shape)}, but '
                    f'one weight per label {tuple(label.shape)} is needed')
            # labels >= C are background and negative ones are ignored
            # (MMDetection's semantics); only labels above C are errors
            check_label_range(name, label, num_classes, ignore_index,
                              allow_negative=True, high_inclusive=True)
            loss_shape = cls_score.shape
        else:
            check_integer_labels(name, label, 'label')
            expected = cls_score.shape[:1] + cls_score.shape[2:]
            if label.shape != expected:
                raise ValueError(
                    f'{name}: cls_score has shape {tuple(cls_score.shape)} '
                    f'so label must have shape {tuple(expected)}, but has '
                    f'shape {tuple(label.shape)}')
            check_weight_shape(name, weight, label.shape)
            check_label_range(name, label, num_classes, ignore_index)
            loss_shape = label.shape
        if self.class_weight is not None and \
                len(self.class_weight) != num_classes:
            raise ValueError(
                f'{name}: class_weight has {len(self.class_weight)} entries '
                f'but cls_score has {num_classes} classes')
        del loss_shape

    def forward(self,
                cls_score: Tensor,
                label: Tensor,
                weight: Optional[Tensor] = None,
                avg_factor: Optional[Union[float, Tensor]] = None,
                reduction_override: Optional[str] = None,
                ignore_index: Optional[int] = None,
                **kwargs) -> Tensor:
        """Compute the loss.

        Args:
            cls_score (Tensor): logits, (N, C) (or (N, C, d1, ...) for
                softmax; any shape matching ``label`` for sigmoid with dense
                targets; (N, C, H, W) with ``use_mask``).
            label (Tensor): labels (N,) / (N, d1, ...), dense targets, or
                mask targets (N, H, W) with ``use_mask``.
            weight (Tensor, optional): per-sample weight; with ``use_mask``
                the (N,) class of each RoI.
            avg_factor (float | Tensor, optional): denominator of the mean.
            reduction_override (str, optional): reduction for this call.
            ignore_index (int, optional): overrides the module's.

        Returns:
            Tensor: the weighted loss.
        """
        reduction = self.resolve_reduction(reduction_override)
        check_avg_factor(self.loss_name, reduction, avg_factor)
        if kwargs:
            raise TypeError(f'{self.loss_name}: unexpected arguments '
                            f'{sorted(kwargs)}')
        ignore_index = _check_ignore_index(
            self.loss_name,
            self.ignore_index if ignore_index is None else ignore_index)
        check_ignore = DEFAULT_IGNORE_INDEX if ignore_index is None \
            else ignore_index
        self._check_inputs(cls_score, label, weight, check_ignore)
        class_weight = self.class_weight_tensor
        if self.use_mask:
            if reduction != 'mean' or avg_factor is not None:
                raise ValueError(
                    f'{self.loss_name}: use_mask supports only reduction='
                    f'"mean" without avg_factor, but got {reduction!r} and '
                    f'avg_factor={avg_factor!r}')
            loss = mask_cross_entropy(cls_score, label, weight, reduction,
                                      avg_factor, class_weight, ignore_index)
        elif self.use_sigmoid:
            loss = binary_cross_entropy(cls_score, label, weight, reduction,
                                        avg_factor, class_weight,
                                        ignore_index, self.avg_non_ignore)
        else:
            loss = softmax_cross_entropy(cls_score, label, weight,
                                         reduction, avg_factor, class_weight,
                                         ignore_index, self.avg_non_ignore)
        return self.apply_loss_weight(loss)


@MODELS.register_module()
class CrossEntropyCustomLoss(CrossEntropyLoss):
    """Cross-entropy whose classifier has its own channels and activation.

    Paper: none (the classical cross-entropy)

    With softmax the classifier has ``num_classes + 1`` channels (the last
    is background); with sigmoid it has ``num_classes`` and the background
    score is ``clamp(1 - sum(sigmoid), 0, 1)``.

    Args:
        num_classes (int): number of foreground classes (required).
        Others as :class:`CrossEntropyLoss`.
    """

    def __init__(self,
                 use_sigmoid: bool = False,
                 use_mask: bool = False,
                 reduction: str = 'mean',
                 num_classes: int = -1,
                 class_weight: Optional[Sequence[float]] = None,
                 ignore_index: Optional[int] = None,
                 loss_weight: float = 1.0,
                 avg_non_ignore: bool = False):
        super().__init__(use_sigmoid, use_mask, reduction, class_weight,
                         ignore_index, loss_weight, avg_non_ignore)
        if isinstance(num_classes, bool) or not isinstance(
                num_classes, Integral) or num_classes <= 0:
            raise ValueError(f'{self.loss_name}: num_classes must be a '
                             f'positive int, but got {num_classes!r}')
        self.num_classes = int(num_classes)
        self.custom_cls_channels = True
        self.custom_activation = True
        self.custom_accuracy = True

    def get_cls_channels(self, num_classes: int) -> int:
        """Classifier channels: ``num_classes + 1`` (softmax) or as given."""
        if num_classes != self.num_classes:
            raise ValueError(f'{self.loss_name}: the head has {num_classes} '
                             f'classes but the loss {self.num_classes}')
        return num_classes if self.use_sigmoid else num_classes + 1

    def get_activation(self, cls_score: Tensor) -> Tensor:
        """Scores (N, num_classes + 1), the last column background."""
        fine = cls_score[:, :self.num_classes]
        if not self.use_sigmoid:
            return F.softmax(
                torch.cat([fine, cls_score[:, -1:]], dim=-1), dim=-1)
        fine = fine.sigmoid()
        background = (1 - fine.sum(dim=1, keepdim=True)).clamp(0, 1)
        return torch.cat([fine, background], dim=1)

    def get_accuracy(self, cls_score: Tensor,
                     labels: Tensor) -> Dict[str, Tensor]:
        """``{'acc_classes': top-1 accuracy over foreground labels}``."""
        positive = labels < self.num_classes
        return dict(acc_classes=top1_accuracy(
            cls_score[:, :self.num_classes][positive], labels[positive]))
