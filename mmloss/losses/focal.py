"""Sigmoid focal loss and its Poly-1 variant.

Focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017,
https://arxiv.org/abs/1708.02002) for a logit ``x``, its probability
``p = sigmoid(x)`` and a (possibly soft) target ``t`` in ``[0, 1]``::

    pt'   = (1 - p) * t + p * (1 - t)          # 1 - pt of the paper
    a_t   = alpha * t + (1 - alpha) * (1 - t)
    FL    = a_t * pt' ** gamma * BCE(x, t)

Poly-1 focal loss (Leng et al., "PolyLoss: A Polynomial Expansion Perspective
of Classification Loss Functions", ICLR 2022, https://arxiv.org/abs/2204.12511)
adds the first polynomial term, not alpha-balanced::

    Poly1 = FL + epsilon * pt' ** (gamma + 1)

Shapes: logits ``(N, C)`` with integer labels ``(N,)`` in ``[0, C]``
(``C`` is the background), or logits of any shape with a one-hot or soft
target of the same shape.

With integer labels every entry is a negative except the one of each
foreground row, so the fast path computes the negative formula for all
``N x C`` entries and overwrites the ``N`` positive entries, never building
a one-hot target. For a negative (``t = 0``) with
``sp(x) = softplus(x) = -log(1 - p)``::

    loss  = (1 - alpha) * p**g * sp(x)          + eps * p**(g+1)
    dl/dx = (1 - alpha) * p**g * (g*(1-p)*sp(x) + p)
            + eps*(g+1) * p**(g+1)*(1-p)

and for a positive (``t = 1``) with ``q = 1 - p``, ``sp(-x) = -log(p)``::

    loss  = alpha * q**g * sp(-x)               + eps * q**(g+1)
    dl/dx = -alpha * q**g * (g*p*sp(-x) + q)    - eps*(g+1) * q**(g+1)*p

Written with softplus these stay finite for logits of +-100, and no power
``p**(g-1)`` appears, so ``gamma < 1`` has no singularity at ``p = 0``.
The kernel (:func:`~mmloss.losses.focal_kernels.sigmoid_focal_kernel`, run
block by block of rows) computes the loss, or this gradient, from one
sigmoid and one softplus per entry. The fast path runs it through
:class:`mmloss.engine.functions.GradientInBackward`: forward computes the
value only, the graph keeps the logits and the labels (no ``N x C``
tensor of its own), and backward runs the kernel again for the gradient;
for a backward with ``create_graph=True`` it differentiates the plain
formula (:func:`label_focal_loss`) instead, so second derivatives are
exact. Which path a call takes is decided by :mod:`mmloss.engine.dispatch`.

With the environment variable ``MMLOSS_COMPILE=1``
(:func:`mmloss.engine.dispatch.compile_enabled`) the same pass runs through
``torch.compile`` (``focal_kernels.fused_sigmoid_focal_kernel``, one fused
loop; the first call compiles, and each new weight layout and the
value-only and gradient-only variants recompile once). If compilation is
unavailable or fails, it warns once and falls back to the eager kernel,
which agrees to rounding.
"""
import functools
from numbers import Real
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import (check_float, check_in_range, check_integer_labels,
                      check_label_range, check_positive, check_tensor,
                      check_weight_shape)
from ..engine import dispatch
from ..engine.functions import IncomingGradient, gradient_in_backward
from ..errors import LossTypeError, LossValueError
from ..gradients import scale_saved_grad
from ..precision import compute_dtype, restore_loss, to_dtype
from ..reduction import Reduction
from ..registry import MODELS
from ..typing_utils import AvgFactor, OptTensor
from .base import BaseLoss

__all__ = [
    'elementwise_focal_loss', 'sigmoid_focal_loss', 'poly1_focal_loss',
    'FocalLoss', 'Poly1FocalLoss'
]

from .focal_kernels import _run_kernel, probability_cross_entropy

# ---------------------------------------------------------------------------
# input checks shared by the focal-family losses
# ---------------------------------------------------------------------------
def check_focal_params(loss_name: str, gamma, alpha,
                       epsilon: Optional[float] = None) -> None:
    """Raise unless gamma >= 0, 0 <= alpha <= 1 and epsilon is finite."""
    check_positive(loss_name, 'gamma', gamma, allow_zero=True)
    check_in_range(loss_name, 'alpha', alpha, 0.0, 1.0, high_inclusive=True)
    if epsilon is not None and (isinstance(epsilon, bool) or not isinstance(
            epsilon, Real) or epsilon != epsilon
                                or abs(epsilon) == float('inf')):
        raise LossValueError(f'{loss_name}: epsilon must be a finite number, '
                             f'but got {epsilon!r}')


def _classification_weight(loss_name: str, weight: Optional[Tensor],
                           num_rows: int, num_classes: int
                           ) -> Optional[Tensor]:
    """``weight`` as (N, 1) or (N, C), accepting mmdet's layouts.

    mmdet accepts a per-anchor weight ``(N,)``/``(N, 1)``, a per-anchor
    per-class weight ``(N, C)`` and the latter flattened to ``(N * C,)``.
    """
    if weight is None:
        return None
    check_tensor(loss_name, 'weight', weight)
    shape = tuple(weight.shape)
    if shape == (num_rows, num_classes):
        return weight
    if weight.dim() >= 1 and shape[0] == num_rows and weight.numel() == \
            num_rows:
        return weight.reshape(num_rows, 1)
    if weight.dim() == 1 and weight.numel() == num_rows * num_classes:
        return weight.reshape(num_rows, num_classes)
    raise LossValueError(f'{loss_name}: weight has shape {shape}, but must be '
                         f'({num_rows},), ({num_rows}, 1), ({num_rows}, '
                         f'{num_classes}) or ({num_rows * num_classes},) for '
                         f'pred of shape ({num_rows}, {num_classes})')


def _check_pred_target(loss_name: str, pred: Tensor, target: Tensor) -> bool:
    """Validate ``pred``/``target``; True when ``target`` holds labels."""
    check_float(loss_name, 'pred', pred)
    check_tensor(loss_name, 'target', target)
    if pred.dim() == target.dim():
        if pred.shape != target.shape:
            raise LossValueError(f'{loss_name}: pred has shape '
                                 f'{tuple(pred.shape)} but target has shape '
                                 f'{tuple(target.shape)}')
        return False
    if pred.dim() != 2 or target.dim() != 1 or \
            target.shape[0] != pred.shape[0]:
        raise LossValueError(
            f'{loss_name}: pred must have shape (N, C) and '
            f'target shape (N,) (labels) or (N, C) (one-hot or '
            f'soft), but got pred {tuple(pred.shape)} and '
            f'target {tuple(target.shape)}')
    check_integer_labels(loss_name, target)
    # num_classes itself is the background index
    check_label_range(loss_name, target, pred.shape[1], high_inclusive=True,
                      argument='target')
    return True


def _check_inputs(loss_name: str, pred: Tensor, target: Tensor,
                  weight: Optional[Tensor], reduction: str,
                  avg_factor) -> Tuple[bool, Optional[Tensor]]:
    """The focal family's one validator: ``(labels_given, weight)`` with
    ``weight`` in the layout the loss uses ((N, 1) or (N, C) for 2-D
    logits, as mmdet reshapes a per-row weight)."""
    Reduction.check(loss_name, reduction, avg_factor)
    labels_given = _check_pred_target(loss_name, pred, target)
    if weight is not None and pred.dim() == 2:
        weight = _classification_weight(loss_name, weight, *pred.shape)
    else:
        check_weight_shape(loss_name, weight, pred.shape)
    return labels_given, weight


# ---------------------------------------------------------------------------
# the plain formula (any target, autograd)
# ---------------------------------------------------------------------------
def elementwise_focal_loss(pred: Tensor,
                           target: Tensor,
                           gamma: float = 2.0,
                           alpha: float = 0.25,
                           epsilon: float = 0.0,
                           activated: bool = False) -> Tensor:
    """The element-wise (Poly-1) focal loss for a one-hot or soft target.

    ``a_t * pt' ** gamma * BCE + epsilon * pt' ** (gamma + 1)`` with
    ``pt' = (1 - p) t + p (1 - t)`` and ``a_t = alpha t + (1 - alpha)(1 - t)``
    (see the module docstring). This is the plain formula, differentiated by
    autograd; the label path of :func:`sigmoid_focal_loss` is checked against
    it.

    Args:
        pred (Tensor): logits, or probabilities if ``activated``; any shape.
        target (Tensor): same shape as ``pred``, values in ``[0, 1]``.
        gamma (float): focusing exponent.
        alpha (float): weight of the positive part, ``1 - alpha`` of the
            negative part.
        epsilon (float): Poly-1 coefficient (0 gives the focal loss).
        activated (bool): ``pred`` holds probabilities, not logits.

    Returns:
        Tensor: the element-wise loss, shape of ``pred``, float32 at least
        (computed with autocast off).
    """
    with dispatch.autocast_off(pred):
        pred = to_dtype(pred, compute_dtype(pred))
        target = target.type_as(pred)
        if activated:
            prob = pred
            bce = F.binary_cross_entropy(pred, target, reduction='none')
        else:
            prob = pred.sigmoid()
            bce = F.binary_cross_entropy_with_logits(pred, target,
                                                     reduction='none')
        one_minus_pt = (1 - prob) * target + prob * (1 - target)
        alpha_t = alpha * target + (1 - alpha) * (1 - target)
        loss = bce * alpha_t * one_minus_pt.pow(gamma)
        if epsilon != 0:
            loss = loss + epsilon * one_minus_pt.pow(gamma + 1)
        return loss


def _positive_columns(labels: Tensor, num_classes: int
                      ) -> Tuple[Tensor, Tensor]:
    """(N, 1) column index of each row's label (clamped) and its fg mask."""
    labels = labels.reshape(-1, 1)
    foreground = labels < num_classes
    return labels.clamp(max=num_classes - 1), foreground


def label_focal_loss(pred: Tensor, labels: Tensor, gamma: float = 2.0,
                     alpha: float = 0.25, epsilon: float = 0.0,
                     activated: bool = False) -> Tensor:
    """The plain element-wise (Poly-1) focal loss for integer labels.

    The negative formula ``(1 - alpha) p**g BCE(x, 0) + eps p**(g+1)`` on
    every entry, then the positive one ``alpha (1-p)**g BCE(x, 1) + eps
    (1-p)**(g+1)`` at each foreground row's label; no one-hot target.
    Differentiated by autograd (any order): the reference of the fast path
    and the formula of its double backward.

    Args:
        pred (Tensor): logits (N, C), or probabilities if ``activated``.
        labels (Tensor): (N,) integers in ``[0, C]``, ``C`` the background.
        gamma, alpha, epsilon: as :func:`elementwise_focal_loss`.
        activated (bool): ``pred`` holds probabilities.

    Returns:
        Tensor: the element-wise loss (N, C), ``pred``'s dtype.
    """
    num_classes = pred.shape[1]
    if activated:
        prob = pred
        neg_ce = probability_cross_entropy(prob, 0.0)
    else:
        prob = pred.sigmoid()
        neg_ce = F.softplus(pred)
    prob_pow = prob.pow(gamma)
    loss = (1 - alpha) * prob_pow * neg_ce
    if epsilon != 0:
        loss = loss + epsilon * prob_pow * prob
    if num_classes == 0:
        return loss
    column, foreground = _positive_columns(labels, num_classes)
    pos_pred = pred.gather(1, column)
    if activated:
        pos_prob = pos_pred
        pos_ce = probability_cross_entropy(pos_prob, 1.0)
    else:
        pos_prob = pos_pred.sigmoid()
        pos_ce = F.softplus(-pos_pred)
    one_minus = 1 - pos_prob
    pos_loss = alpha * one_minus.pow(gamma) * pos_ce
    if epsilon != 0:
        pos_loss = pos_loss + epsilon * one_minus.pow(gamma + 1)
    # background rows keep their (negative) value at the clamped column
    pos_loss = torch.where(foreground, pos_loss, loss.gather(1, column))
    return loss.scatter(1, column, pos_loss)


# ---------------------------------------------------------------------------
# the engine's kernels and plain formula, and the public functions
# ---------------------------------------------------------------------------
def _focal_value(logits: Tensor, labels: Tensor, weight: Optional[Tensor], *,
                 gamma: float, alpha: float, epsilon: float,
                 reduce_sum: bool):
    """``value_kernel(logits, labels, weight) -> (value, extras)`` of
    :class:`~mmloss.engine.functions.GradientInBackward`: the weighted
    element-wise loss (N, C) or its sum, in float32 at least. Backward
    needs the inputs and, per row block, where it ends and which way
    :func:`sigmoid_and_softplus` went (a (blocks, 2) integer tensor:
    :func:`_blocked_kernel`), nothing after a compiled kernel."""
    x = to_dtype(logits, compute_dtype(logits))
    loss, _, _, taken = _run_kernel(x, labels, weight, gamma, alpha,
                                    epsilon, reduce_sum, False, True)
    return loss, (() if taken is None else (torch.tensor(taken), ))


def _focal_grad(grad_output: Tensor, needs, extras, logits: Tensor,
                labels: Tensor, weight: Optional[Tensor], *, gamma: float,
                alpha: float, epsilon: float, reduce_sum: bool):
    """The :class:`~mmloss.engine.functions.IncomingGradient` kernel of
    :class:`~mmloss.engine.functions.GradientInBackward`: the kernel again,
    for the gradient alone, each block the way forward took it (a half
    gradient is cast only after it is scaled). A scalar incoming gradient
    goes into the kernel's last pass where the CPU kernels may run (a host
    read); otherwise one pass scales the gradient after it."""
    if not needs[0]:
        return None, None, None
    x = to_dtype(logits, compute_dtype(logits))
    factor = float(grad_output) if grad_output.dim() == 0 and \
        dispatch.cpu_kernels(logits) else None
    _, grad, scale, _ = _run_kernel(
        x, labels, weight, gamma, alpha, epsilon, reduce_sum, True, False,
        plan=extras[0].tolist() if extras else None, grad_factor=factor)
    if factor is None:
        grad = scale_saved_grad(grad, grad_output, scale)
    return grad, None, None


def _focal_plain(logits: Tensor, labels: Tensor, weight: Optional[Tensor], *,
                 gamma: float, alpha: float, epsilon: float,
                 reduce_sum: bool) -> Tensor:
    """The value of :func:`_focal_value` by autograd ops."""
    with dispatch.autocast_off(logits):
        x = to_dtype(logits, compute_dtype(logits))
        loss = label_focal_loss(x, labels, gamma, alpha, epsilon)
        if weight is not None:
            loss = loss * weight
        return loss.sum() if reduce_sum else loss


#: The dispatch table's name (:func:`mmloss.engine.dispatch.use_fast`) of
#: each caller of the label fast path; any other caller is ``'FocalLoss'``.
_DISPATCH_NAMES = {'poly1_focal_loss': 'Poly1FocalLoss',
                   'Poly1FocalLoss': 'Poly1FocalLoss'}


def _focal_loss(loss_name: str, pred: Tensor, target: Tensor,
                weight: OptTensor, gamma: float, alpha: float,
                epsilon: float, reduction: str, avg_factor: AvgFactor,
                activated: bool) -> Tensor:
    labels_given, weight = _check_inputs(loss_name, pred, target, weight,
                                         reduction, avg_factor)
    with dispatch.autocast_off(pred):
        dtype = compute_dtype(pred)
        if weight is not None:
            weight = to_dtype(weight, dtype)
        rule = Reduction(loss_name, weight, reduction, avg_factor)
        x = to_dtype(pred, dtype)
        if not labels_given:  # one-hot or soft targets: the plain formula
            loss = elementwise_focal_loss(x, target, gamma, alpha, epsilon,
                                          activated)
            return restore_loss(rule.apply(loss), pred, rule.reduces)
        if activated or not dispatch.use_fast(
                _DISPATCH_NAMES.get(loss_name, 'FocalLoss'), pred,
                rows=pred.shape[0]):
            loss = label_focal_loss(x, target, gamma, alpha, epsilon,
                                    activated)
            return restore_loss(rule.apply(loss), pred, rule.reduces)

        def run(reduce_sum: bool, weight: Optional[Tensor]) -> Tensor:
            options = dict(gamma=float(gamma), alpha=float(alpha),
                           epsilon=float(epsilon), reduce_sum=reduce_sum)
            return gradient_in_backward(
                functools.partial(_focal_value, **options),
                IncomingGradient(functools.partial(_focal_grad, **options)),
                functools.partial(_focal_plain, **options), pred, target,
                weight)

        return restore_loss(
            rule.run_kernel(run, dtype, pred.device, pred.numel()), pred,
            rule.reduces)


def sigmoid_focal_loss(pred: Tensor, target: Tensor,
                       weight: OptTensor = None, gamma: float = 2.0,
                       alpha: float = 0.25, reduction: str = 'mean',
                       avg_factor: AvgFactor = None,
                       activated: bool = False) -> Tensor:
    """Sigmoid focal loss (Lin et al. 2017), weighted and reduced.

    ``FL = a_t * pt' ** gamma * BCE(x, t)``, see the module docstring.

    Args:
        pred (Tensor): logits (N, C), or probabilities if ``activated``.
        target (Tensor): integer labels (N,) in ``[0, C]`` with ``C`` the
            background, or a one-hot / soft target of ``pred``'s shape.
        weight (Tensor, optional): (N,), (N, 1), (N, C) or (N * C,).
        gamma (float): focusing exponent, ``>= 0``.
        alpha (float): positive/negative balance in ``[0, 1]``.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean.
        activated (bool): ``pred`` holds probabilities.

    Returns:
        Tensor: (N, C) for ``'none'`` in ``pred``'s dtype, else a scalar
            in float32 at least (:func:`mmloss.precision.restore_loss`).
    """
    check_focal_params('sigmoid_focal_loss', gamma, alpha)
    return _focal_loss('sigmoid_focal_loss', pred, target, weight, gamma,
                       alpha, 0.0, reduction, avg_factor, activated)


def poly1_focal_loss(pred: Tensor, target: Tensor, weight: OptTensor = None,
                     gamma: float = 2.0, alpha: float = 0.25,
                     epsilon: float = 1.0, reduction: str = 'mean',
                     avg_factor: AvgFactor = None,
                     activated: bool = False) -> Tensor:
    """Poly-1 focal loss (Leng et al. 2022), weighted and reduced.

    ``Poly1 = FL + epsilon * pt' ** (gamma + 1)`` with ``pt' = 1 - pt`` the
    probability mass away from the target. For a positive at ``p = 0.5``,
    ``gamma = 2``, ``alpha = 0.25``, ``epsilon = 1``:
    ``0.25 * 0.25 * log 2 + 0.125 = 0.1683``.

    Args: as :func:`sigmoid_focal_loss`, plus
        epsilon (float): coefficient of the first polynomial term.

    Returns:
        Tensor: (N, C) for ``'none'`` in ``pred``'s dtype, else a scalar
            in float32 at least (:func:`mmloss.precision.restore_loss`).
    """
    check_focal_params('poly1_focal_loss', gamma, alpha, epsilon)
    return _focal_loss('poly1_focal_loss', pred, target, weight, gamma, alpha,
                       float(epsilon), reduction, avg_factor, activated)


# ---------------------------------------------------------------------------
# registered modules
# ---------------------------------------------------------------------------
def _check_use_sigmoid(loss_name: str, use_sigmoid) -> bool:
    if use_sigmoid is not True:
        raise LossValueError(
            f'{loss_name}: only the sigmoid form is supported, '
            f'use_sigmoid must be True, but got {use_sigmoid!r}')
    return True


def _set_focal_options(module: BaseLoss, gamma, alpha, activated) -> None:
    """Check and set ``gamma``, ``alpha`` and ``activated`` of a focal
    loss module (:class:`FocalLoss`, ``FocalCustomLoss``)."""
    check_focal_params(module.loss_name, gamma, alpha)
    module.gamma = gamma
    module.alpha = alpha
    module.activated = bool(activated)


@MODELS.register_module()
class FocalLoss(BaseLoss):
    """Sigmoid focal loss (Lin et al. 2017), twin of mmdet's ``FocalLoss``.

    Paper: Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, https://arxiv.org/abs/1708.02002

    ``FL = a_t * pt' ** gamma * BCE(x, t)``; see :func:`sigmoid_focal_loss`.
    Integer labels (background ``num_classes``) take the fast analytic path.

    Args:
        use_sigmoid (bool): must be True (softmax focal loss is not
            supported).
        gamma (float): focusing exponent. Defaults to 2.0.
        alpha (float): positive/negative balance. Defaults to 0.25.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): factor applied to the loss.
        activated (bool): ``pred`` holds probabilities, not logits.
    """

    #: coefficient of the Poly-1 term; plain focal loss has none
    epsilon = 0.0

    def __init__(self, use_sigmoid=True, gamma=2.0, alpha=0.25,
                 reduction='mean', loss_weight=1.0, activated=False):
        super().__init__(reduction, loss_weight)
        self.use_sigmoid = _check_use_sigmoid(self.loss_name, use_sigmoid)
        _set_focal_options(self, gamma, alpha, activated)

    def forward(self, pred, target, weight=None, avg_factor=None,
                reduction_override=None, **kwargs):
        """Weighted focal loss of ``pred`` (N, C) and ``target`` (N,)/(N, C).

        Args:
            pred (Tensor): logits, or probabilities if ``activated``.
            target (Tensor): labels (N,) in ``[0, C]`` or (N, C) targets.
            weight (Tensor, optional): (N,), (N, 1), (N, C) or (N * C,).
            avg_factor (float | Tensor, optional): denominator of the mean.
            reduction_override (str, optional): overrides ``reduction``.
        """
        if kwargs:  # named here: Python would name FocalLoss.forward
            raise LossTypeError(f'{self.loss_name}: unexpected keyword '
                                f'arguments {sorted(kwargs)}')
        reduction = self.resolve_reduction(reduction_override)
        return self.apply_loss_weight(_focal_loss(
            self.loss_name, pred, target, weight, self.gamma, self.alpha,
            self.epsilon, reduction, avg_factor, self.activated))

    def extra_repr(self) -> str:
        return (f'gamma={self.gamma}, alpha={self.alpha}, '
                f'activated={self.activated}, ' + super().extra_repr())


@MODELS.register_module()
class Poly1FocalLoss(FocalLoss):
    """Poly-1 focal loss (Leng et al. 2022, https://arxiv.org/abs/2204.12511).

    Paper: Leng et al., "PolyLoss", ICLR 2022, https://arxiv.org/abs/2204.12511

    ``Poly1 = FL + epsilon * pt' ** (gamma + 1)`` where ``FL`` is the
    sigmoid focal loss and ``pt' = (1 - p) t + p (1 - t)``; the epsilon term
    is not alpha-balanced, as in the paper. Same interface as
    :class:`FocalLoss`, plus ``epsilon`` (the paper's default 1.0).

    Args:
        use_sigmoid (bool): must be True.
        gamma (float): focusing exponent. Defaults to 2.0.
        alpha (float): positive/negative balance. Defaults to 0.25.
        epsilon (float): coefficient of the first polynomial term.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): factor applied to the loss.
        activated (bool): ``pred`` holds probabilities, not logits.
    """

    def __init__(self, use_sigmoid=True, gamma=2.0, alpha=0.25, epsilon=1.0,
                 reduction='mean', loss_weight=1.0, activated=False):
        super().__init__(use_sigmoid, gamma, alpha, reduction, loss_weight,
                         activated)
        check_focal_params(self.loss_name, gamma, alpha, epsilon)
        self.epsilon = float(epsilon)

    def extra_repr(self) -> str:
        return f'epsilon={self.epsilon}, ' + super().extra_repr()
