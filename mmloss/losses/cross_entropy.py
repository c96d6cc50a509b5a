"""Cross-entropy losses: softmax, sigmoid (binary) and per-class mask CE.

Softmax cross-entropy of logits ``x`` (N, C) (or (N, C, d1, ...)) and a
class index ``l`` (N,) (or (N, d1, ...))::

    loss_i = w_c[l_i] * (logsumexp_j x_ij - x_il_i)   (0 if l_i is ignored)

Binary (sigmoid) cross-entropy of logits ``x`` and a 0/1 target ``y`` of the
same shape, with the per-class positive weight ``p_j`` (``class_weight``)::

    loss_ij = p_j * y_ij * softplus(-x_ij) + (1 - y_ij) * softplus(x_ij)

With integer labels (N,) against logits (N, C), ``y`` is the one-hot of the
label; labels ``>= C`` (background) give an all-zero row and negative labels
or ``ignore_index`` give a zero-weight row, exactly as MMDetection 3.3 does.

Fast paths (chosen by :mod:`mmloss.engine.dispatch`): 2-D softmax logits,
from the dispatch table's ``min_rows['CrossEntropyLoss']`` rows up (below it
``F.cross_entropy``'s single fused kernel is faster), run through
:class:`mmloss.engine.functions.GradientFromOutput`: forward takes one
exponential per logit and keeps those exponentials (not the logits), the
labels narrowed to the smallest integer type and each row's sum
(:func:`~mmloss.losses.cross_entropy_kernels.softmax_cross_entropy_kernel`),
and backward turns them into ``softmax - onehot`` in place; a backward with
``create_graph=True`` takes the same gradient by differentiable ops of the
kept exponentials, so every higher derivative is exact too.
Integer-label sigmoid logits with ``'mean'``/``'sum'`` never build the
one-hot target (``cross_entropy_kernels.sigmoid_one_hot_kernel``, through
:class:`mmloss.engine.functions.GradientInForward`, from
``min_rows['CrossEntropyLoss(sigmoid)']`` rows up), whose plain formula by
autograd ops a backward with ``create_graph=True`` differentiates. Both
plain formulas run instead where ``fast=False`` (or
:func:`mmloss.fast_paths`) says so.
"""
import warnings
from numbers import Integral, Real
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import (check_float, check_integer_labels, check_label_range,
                      check_tensor, check_weight_shape)
from ..engine import dispatch
from ..engine.functions import gradient_in_forward
from ..errors import LossTypeError, LossValueError
from ..precision import compute_dtype, restore_loss, to_dtype
from ..reduction import Reduction
from ..registry import MODELS
from ..typing_utils import AvgFactor, OptStr, OptTensor
from .base import BaseLoss
from .cross_entropy_kernels import (  # noqa: F401 (rows: kernels' old home)
    DEFAULT_IGNORE_INDEX, accurate_neg_log, sigmoid_one_hot_kernel,
    sigmoid_one_hot_plain, sigmoid_one_hot_rows, softmax_cross_entropy_rows)

__all__ = [
    'softmax_cross_entropy', 'binary_cross_entropy', 'accurate_neg_log',
    'mask_cross_entropy', 'top1_accuracy', 'CrossEntropyLoss',
    'CrossEntropyCustomLoss'
]


#: The dispatch table's names (:func:`mmloss.engine.dispatch.use_fast`) of
#: the softmax and the integer-label sigmoid fast paths.
SOFTMAX_DISPATCH_NAME = 'CrossEntropyLoss'
SIGMOID_DISPATCH_NAME = 'CrossEntropyLoss(sigmoid)'


def _check_class_weight_size(loss_name: str, class_weight: Optional[Tensor],
                             num_classes: int) -> None:
    if class_weight is not None and class_weight.numel() != num_classes:
        raise LossValueError(
            f'{loss_name}: class_weight has {class_weight.numel()} entries '
            f'but pred has {num_classes} classes')


def _cross_entropy_function(name: str, implementation: Callable,
                            doc: str) -> Callable:
    """A public cross-entropy function of ``pred`` and ``label``:
    MMDetection's signature, then ``implementation`` with ``name`` as the
    loss name of its errors."""

    def loss(pred: Tensor, label: Tensor, weight: OptTensor = None,
             reduction: str = 'mean', avg_factor: AvgFactor = None,
             class_weight: OptTensor = None,
             ignore_index: Optional[int] = DEFAULT_IGNORE_INDEX,
             avg_non_ignore: bool = False, fast: bool = True) -> Tensor:
        return implementation(name, pred, label, weight, reduction,
                              avg_factor, class_weight, ignore_index,
                              avg_non_ignore, fast)

    loss.__name__ = loss.__qualname__ = name
    loss.__doc__ = doc
    return loss


def _check_entry(loss_name: str, reduction, avg_factor,
                 ignore_index: Optional[int]) -> int:
    """Checks ``reduction`` and ``avg_factor``; returns ``ignore_index``
    (``None``: the default, -100)."""
    Reduction.check(loss_name, reduction, avg_factor)
    return DEFAULT_IGNORE_INDEX if ignore_index is None else ignore_index


def _check_logits_and_label(loss_name: str, pred, label) -> None:
    """Float logits ``pred`` with a class dim and a tensor ``label``."""
    check_float(loss_name, 'pred', pred)
    check_tensor(loss_name, 'label', label)
    if pred.dim() == 0:
        raise LossValueError(
            f'{loss_name}: pred must have a class dim, but has '
            f'shape ()')


# --------------------------------------------------------------------------
# Softmax cross-entropy
# --------------------------------------------------------------------------
def _check_softmax_inputs(loss_name, pred, label, weight,
                          class_weight) -> None:
    """Shapes and dtypes (the label values: see
    :func:`_softmax_cross_entropy`)."""
    if isinstance(pred, Tensor) and isinstance(label, Tensor) and \
            label.dtype is torch.int64 and pred.dim() == 2 and \
            label.dim() == 1 and pred.is_floating_point():
        # the common case in one test (every step of a RoI head)
        mismatch = label.size(0) != pred.size(0)
    else:
        _check_logits_and_label(loss_name, pred, label)
        check_integer_labels(loss_name, label, 'label')
        mismatch = label.shape[:1] != pred.shape[:1] or \
            label.shape[1:] != pred.shape[2:]
    if mismatch:
        expected = pred.shape[:1] + pred.shape[2:]
        raise LossValueError(
            f'{loss_name}: pred has shape {tuple(pred.shape)} '
            f'so label must have shape {tuple(expected)}, but '
            f'has shape {tuple(label.shape)}')
    if weight is not None:
        check_weight_shape(loss_name, weight, label.shape)
    if class_weight is not None:
        _check_class_weight_size(loss_name, class_weight, pred.size(1))


def softmax_fast_path(pred: Tensor, class_weight: Optional[Tensor],
                      fast: bool) -> bool:
    """Whether softmax cross-entropy of ``pred`` takes the fast path: 2-D
    logits with classes, a constant class weight, as the dispatcher
    decides (``fast=False`` never)."""
    return fast and pred.dim() == 2 and pred.size(1) > 0 and not (
        class_weight is not None and class_weight.requires_grad) and \
        dispatch.use_fast(SOFTMAX_DISPATCH_NAME, pred, rows=pred.size(0))


def _softmax_cross_entropy(loss_name, pred, label, weight, reduction,
                           avg_factor, class_weight, ignore_index,
                           avg_non_ignore, fast):
    ignore_index = _check_entry(loss_name, reduction, avg_factor,
                                ignore_index)
    _check_softmax_inputs(loss_name, pred, label, weight, class_weight)
    fast = softmax_fast_path(pred, class_weight, fast)
    # the kernels index with the labels unchecked, and off the CPU the
    # check is queued on the device; on the CPU F.cross_entropy checks
    # every label itself: a label out of range raises IndexError there,
    # which the check names (no pass over the labels before)
    checked_first = fast or not dispatch.tuning(label).cpu_kernels
    if checked_first:
        check_label_range(loss_name, label, pred.size(1), ignore_index)
    try:
        return softmax_cross_entropy_checked(
            loss_name, pred, label, weight, reduction, avg_factor,
            class_weight, ignore_index, avg_non_ignore, fast)
    except IndexError:
        if not checked_first:
            check_label_range(loss_name, label, pred.size(1), ignore_index)
        raise


def softmax_cross_entropy_checked(loss_name, pred, label, weight, reduction,
                                  avg_factor, class_weight, ignore_index,
                                  avg_non_ignore, fast) -> Tensor:
    """:func:`softmax_cross_entropy` of inputs already checked (by the
    caller that made them), ``ignore_index`` an int, ``fast`` the decision
    of :func:`softmax_fast_path` (which the caller makes once)."""
    return dispatch.without_autocast(
        pred, _softmax_cross_entropy_body, loss_name, pred, label, weight,
        reduction, avg_factor, class_weight, ignore_index, avg_non_ignore,
        fast)


def _softmax_cross_entropy_body(loss_name, pred, label, weight, reduction,
                                avg_factor, class_weight, ignore_index,
                                avg_non_ignore, fast) -> Tensor:
    dtype = compute_dtype(pred)
    if avg_factor is None and avg_non_ignore and reduction == 'mean':
        # a tensor, so no host sync (MMDetection calls .item() here)
        avg_factor = label.numel() - (label == ignore_index).sum()
    if weight is not None:
        weight = to_dtype(weight, dtype)
    if class_weight is not None:
        class_weight = to_dtype(class_weight, dtype)
    rule = Reduction(loss_name, weight, reduction, avg_factor)
    if fast:
        loss = softmax_cross_entropy_rows(pred, label, rule, class_weight,
                                          ignore_index)
    else:
        # F.cross_entropy takes int64 (or uint8) labels only; the checks
        # accept every integer dtype
        loss = rule.apply(F.cross_entropy(
            to_dtype(pred, dtype), to_dtype(label, torch.int64),
            weight=class_weight, reduction='none',
            ignore_index=ignore_index))
    return restore_loss(loss, pred, rule.reduces)


softmax_cross_entropy = _cross_entropy_function(
    'softmax_cross_entropy', _softmax_cross_entropy,
    """Softmax cross-entropy, weighted and reduced as MMDetection does.

    MMDetection calls this ``cross_entropy`` (an alias here that is not
    exported: the name would shadow this module in ``mmloss.losses``).
    Element-wise ``loss_i = class_weight[l_i] * (logsumexp_j x_ij - x_il_i)``,
    0 where ``l_i == ignore_index``. It is multiplied
    by ``weight`` and reduced by :class:`~mmloss.reduction.Reduction`.
    ``'mean'`` divides by the number of elements (ignored ones included)
    unless ``avg_non_ignore`` is set, which divides by the number of labels
    that are not ``ignore_index`` (0 of them gives ``0``, not ``NaN``).

    Args:
        pred (Tensor): logits (N, C) or (N, C, d1, ...).
        label (Tensor): integer labels (N,) or (N, d1, ...), any integer
            dtype.
        weight (Tensor, optional): per-element weight, shaped like ``label``.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean.
        class_weight (Tensor, optional): (C,) per-class weight.
        ignore_index (int, optional): ignored label; ``None`` means -100.
        avg_non_ignore (bool): average over the non-ignored labels only.
        fast (bool): allow the fast path (2-D logits, as the dispatcher
            decides); ``False`` runs the plain formula.

    Returns:
        Tensor: the loss: for ``'none'`` in ``pred``'s dtype, reduced in
            float32 at least (:func:`mmloss.precision.restore_loss`).
    """)
cross_entropy = softmax_cross_entropy


# --------------------------------------------------------------------------
# Binary (sigmoid) cross-entropy
# --------------------------------------------------------------------------
def _check_sigmoid_inputs(loss_name, pred, label, weight, class_weight,
                          ignore_index) -> None:
    _check_logits_and_label(loss_name, pred, label)
    if pred.dim() == label.dim():
        if pred.shape != label.shape:
            raise LossValueError(f'{loss_name}: pred has shape '
                                 f'{tuple(pred.shape)} but label has shape '
                                 f'{tuple(label.shape)}')
        check_weight_shape(loss_name, weight, pred.shape)
    else:
        check_integer_labels(loss_name, label, 'label')
        if pred.dim() != 2 or label.dim() != 1 or \
                label.shape[0] != pred.shape[0]:
            raise LossValueError(
                f'{loss_name}: with integer labels pred must be (N, C) and '
                f'label (N,), but got {tuple(pred.shape)} and '
                f'{tuple(label.shape)}')
        if weight is not None and (check_tensor(
                loss_name, 'weight', weight).numel() != label.numel()):
            raise LossValueError(
                f'{loss_name}: weight has shape {tuple(weight.shape)}, but '
                f'one weight per label {tuple(label.shape)} is needed')
        # labels >= C are background and negative ones are ignored
        # (MMDetection's semantics); only labels above C are errors
        check_label_range(loss_name, label, pred.size(-1), ignore_index,
                          allow_negative=True, high_inclusive=True)
    _check_class_weight_size(loss_name, class_weight, pred.size(-1))


def _binary_cross_entropy(loss_name, pred, label, weight, reduction,
                          avg_factor, class_weight, ignore_index,
                          avg_non_ignore, fast):
    ignore_index = _check_entry(loss_name, reduction, avg_factor,
                                ignore_index)
    _check_sigmoid_inputs(loss_name, pred, label, weight, class_weight,
                          ignore_index)
    with dispatch.autocast_off(pred):
        dtype = compute_dtype(pred)
        if class_weight is not None:
            class_weight = to_dtype(class_weight, dtype)
        valid = ((label >= 0) & (label != ignore_index)).to(dtype)
        if pred.dim() != label.dim():
            num_classes = pred.size(-1)
            row_weight = valid if weight is None else \
                to_dtype(weight.reshape(-1), dtype) * valid
            if avg_factor is None and avg_non_ignore and reduction == 'mean':
                avg_factor = valid.sum() * num_classes
            rule = Reduction(loss_name, row_weight[:, None], reduction,
                             avg_factor)
            if fast and rule.fuses(dtype, pred.device,
                                   (pred.size(0), 1)) and not (
                        class_weight is not None and
                        class_weight.requires_grad) and dispatch.use_fast(
                            SIGMOID_DISPATCH_NAME, pred, rows=pred.size(0)):
                total = gradient_in_forward(
                    sigmoid_one_hot_kernel, sigmoid_one_hot_plain, pred,
                    label, class_weight, row_weight)
                return restore_loss(rule.finish(total, pred.numel()),
                                    pred, True)
            target = torch.zeros(pred.shape, dtype=dtype, device=pred.device)
            positive = (label >= 0) & (label < num_classes)
            target.scatter_(1, torch.where(positive, label, 0).long()[:, None],
                            positive.to(dtype)[:, None])
        else:
            target = to_dtype(label, dtype)
            if avg_factor is None and avg_non_ignore and reduction == 'mean':
                avg_factor = valid.sum()
            rule = Reduction(loss_name, valid if weight is None else
                             to_dtype(weight, dtype) * valid, reduction,
                             avg_factor)
        loss = F.binary_cross_entropy_with_logits(
            to_dtype(pred, dtype), target, pos_weight=class_weight,
            reduction='none')
        return restore_loss(rule.apply(loss), pred, rule.reduces)


binary_cross_entropy = _cross_entropy_function(
    'binary_cross_entropy', _binary_cross_entropy,
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
        fast (bool): allow the fast path (the one-hot case with
            ``'mean'``/``'sum'``, as the dispatcher decides); ``False`` runs
            the plain formula.

    Returns:
        Tensor: the loss: for ``'none'`` in ``pred``'s dtype, reduced in
            float32 at least (:func:`mmloss.precision.restore_loss`).
    """)


# --------------------------------------------------------------------------
# Mask cross-entropy
# --------------------------------------------------------------------------
def mask_cross_entropy(pred: Tensor, target: Tensor, label: Tensor,
                       reduction: str = 'mean', avg_factor: AvgFactor = None,
                       class_weight: OptTensor = None,
                       ignore_index: Optional[int] = None,
                       **kwargs) -> Tensor:
    """Binary cross-entropy of each RoI's mask for its own class.

    ``mean(cw * BCE(x, target))`` with ``x = pred[i, label_i]`` (N, *) and
    then, as MMDetection does, dim 1 of ``x`` dropped when its size is 1;
    ``target`` has the shape of ``x``. So mask logits (N, C, H, W) take
    targets (N, H, W) (Mask R-CNN) and point logits (N, C, P) take targets
    (N, P) (PointRend). ``class_weight`` broadcasts over ``x`` like
    MMDetection's (which passes it as BCE's element weight). Returned with
    shape (1,). Only ``reduction='mean'`` without ``avg_factor`` or
    ``ignore_index`` is defined (as in MMDetection); other keyword
    arguments are ignored, as MMDetection ignores them. No RoIs give ``0``
    connected to the graph (MMDetection: ``NaN``).

    Args:
        pred (Tensor): mask logits (N, C, *), ``*`` at least one dim.
        target (Tensor): mask targets in [0, 1], the shape of ``x`` above.
        label (Tensor): (N,) class of each RoI, any integer dtype.

    Returns:
        Tensor: (1,) loss, float32 at least.
    """
    return _mask_cross_entropy('mask_cross_entropy', pred, target, label,
                               reduction, avg_factor, class_weight,
                               ignore_index)


def _mask_logits_shape(pred: Tensor) -> tuple:
    """The shape of ``pred[rows, label]`` after MMDetection's
    ``squeeze(1)`` (dim 1 of the picked logits dropped if of size 1)."""
    shape = tuple(pred.shape[:1] + pred.shape[2:])
    if len(shape) > 1 and shape[1] == 1:
        shape = shape[:1] + shape[2:]
    return shape


def _mask_cross_entropy(loss_name, pred, target, label, reduction,
                        avg_factor, class_weight, ignore_index):
    if reduction != 'mean' or avg_factor is not None \
            or ignore_index is not None:
        raise LossValueError(
            f'{loss_name}: with masks only reduction="mean" without '
            f'avg_factor and ignore_index is supported, but got reduction='
            f'{reduction!r}, avg_factor={avg_factor!r}, ignore_index='
            f'{ignore_index!r}')
    check_float(loss_name, 'pred', pred)
    check_tensor(loss_name, 'target', target)
    if label is None:  # MMDetection fails on it with a ValueError
        raise LossValueError(
            f'{loss_name}: use_mask=True needs label (the RoI labels, the '
            f'third argument of forward), but got None')
    check_tensor(loss_name, 'label (the RoI labels)', label)
    check_integer_labels(loss_name, label, 'label (the RoI labels)')
    # (N, C) logits have nothing left after picking the class: MMDetection
    # fails there too (squeeze(1) of a 1-d tensor)
    if pred.dim() < 3 or label.shape != pred.shape[:1] or \
            tuple(target.shape) != _mask_logits_shape(pred):
        raise LossValueError(
            f'{loss_name}: mask logits must be (N, C, *) with targets '
            f'shaped like the logits of the RoI classes (e.g. (N, C, H, W) '
            f'and (N, H, W), or (N, C, P) and (N, P)) and RoI labels (N,), '
            f'but got {tuple(pred.shape)}, {tuple(target.shape)} and '
            f'{tuple(label.shape)}')
    check_label_range(loss_name, label, pred.size(1),
                      argument='label (the RoI labels)')
    with dispatch.autocast_off(pred):
        dtype = compute_dtype(pred)
        rows = torch.arange(pred.size(0), device=pred.device)
        picked = to_dtype(pred[rows, label.long()], dtype).reshape(
            target.shape)
        loss = F.binary_cross_entropy_with_logits(
            picked, to_dtype(target, dtype), reduction='none')
        if class_weight is not None:
            loss = loss * to_dtype(class_weight, dtype)
        # 'mean' only: the reduced loss's dtype
        return restore_loss(Reduction(loss_name).apply(loss), pred,
                            True)[None]


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
        raise LossTypeError(f'{loss_name}: class_weight must be a list of '
                            f'numbers or None, but got {class_weight!r}')
    return [float(w) for w in class_weight]


def _check_ignore_index(loss_name: str, ignore_index) -> Optional[int]:
    if ignore_index is not None and (isinstance(ignore_index, bool) or
                                     not isinstance(ignore_index, Integral)):
        raise LossTypeError(
            f'{loss_name}: ignore_index must be an int or None, '
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

    def __init__(self, use_sigmoid: bool = False, use_mask: bool = False,
                 reduction: str = 'mean',
                 class_weight: Optional[Sequence[float]] = None,
                 ignore_index: Optional[int] = None,
                 loss_weight: float = 1.0, avg_non_ignore: bool = False):
        super().__init__(reduction, loss_weight)
        if use_sigmoid and use_mask:
            raise LossValueError(f'{self.loss_name}: use_sigmoid and use_mask '
                                 'can not both be True')
        self.use_sigmoid = bool(use_sigmoid)
        self.use_mask = bool(use_mask)
        self.class_weight = _check_class_weight(self.loss_name, class_weight)
        self.ignore_index = _check_ignore_index(self.loss_name, ignore_index)
        self.avg_non_ignore = bool(avg_non_ignore)
        if self.use_mask and self.ignore_index is not None:
            raise LossValueError(
                f'{self.loss_name}: use_mask does not support '
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

    def forward(self, cls_score: Tensor, label: Tensor,
                weight: OptTensor = None, avg_factor: AvgFactor = None,
                reduction_override: OptStr = None,
                ignore_index: Optional[int] = None, **kwargs) -> Tensor:
        """Compute the loss (the family's functions check the inputs).

        Args:
            cls_score (Tensor): logits, (N, C) (or (N, C, d1, ...) for
                softmax; any shape matching ``label`` for sigmoid with dense
                targets; (N, C, *) with ``use_mask``).
            label (Tensor): labels (N,) / (N, d1, ...), dense targets, or
                with ``use_mask`` mask targets (N, H, W) (logits
                (N, C, H, W)) or point targets (N, P) (logits (N, C, P),
                PointRend): see :func:`mask_cross_entropy`.
            weight (Tensor, optional): per-sample weight; with ``use_mask``
                the (N,) class of each RoI.
            avg_factor (float | Tensor, optional): denominator of the mean.
            reduction_override (str, optional): reduction for this call.
            ignore_index (int, optional): overrides the module's.

        Returns:
            Tensor: the weighted loss.
        """
        reduction = self.resolve_reduction(reduction_override)
        # MMDetection's mask criterion takes and ignores extra keywords;
        # its softmax and sigmoid ones refuse them
        if kwargs and not self.use_mask:
            raise LossTypeError(f'{self.loss_name}: unexpected arguments '
                                f'{sorted(kwargs)}')
        ignore_index = _check_ignore_index(
            self.loss_name,
            self.ignore_index if ignore_index is None else ignore_index)
        # (a buffer is read through nn.Module.__getattr__: only if there
        # is one)
        class_weight = None if self.class_weight is None else \
            self.class_weight_tensor
        if self.use_mask:
            loss = _mask_cross_entropy(self.loss_name, cls_score, label,
                                       weight, reduction, avg_factor,
                                       class_weight, ignore_index)
        elif self.use_sigmoid:
            loss = _binary_cross_entropy(self.loss_name, cls_score, label,
                                         weight, reduction, avg_factor,
                                         class_weight, ignore_index,
                                         self.avg_non_ignore, True)
        else:
            loss = _softmax_cross_entropy(self.loss_name, cls_score, label,
                                          weight, reduction, avg_factor,
                                          class_weight, ignore_index,
                                          self.avg_non_ignore, True)
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

    def __init__(self, use_sigmoid: bool = False, use_mask: bool = False,
                 reduction: str = 'mean', num_classes: int = -1,
                 class_weight: Optional[Sequence[float]] = None,
                 ignore_index: Optional[int] = None,
                 loss_weight: float = 1.0, avg_non_ignore: bool = False):
        super().__init__(use_sigmoid, use_mask, reduction, class_weight,
                         ignore_index, loss_weight, avg_non_ignore)
        if isinstance(num_classes, bool) or not isinstance(
                num_classes, Integral) or num_classes <= 0:
            raise LossValueError(f'{self.loss_name}: num_classes must be a '
                                 f'positive int, but got {num_classes!r}')
        self.num_classes = int(num_classes)
        self.custom_cls_channels = True
        self.custom_activation = True
        self.custom_accuracy = True

    def get_cls_channels(self, num_classes: int) -> int:
        """Classifier channels: ``num_classes + 1`` (softmax) or as given."""
        if num_classes != self.num_classes:
            raise LossValueError(
                f'{self.loss_name}: the head has {num_classes} '
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
