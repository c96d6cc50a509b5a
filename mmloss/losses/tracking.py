"""Losses of tracking and re-identification embeddings.

* **Multi-positive cross-entropy** (QDTrack's ``loss_track``). A row of
  similarities ``x`` (N, M) between a key object and M reference objects,
  with labels ``y`` (``y >= 1`` the same object, ``y == 0`` another):

  ``loss = log(1 + sum_{p: y_p >= 1} sum_{n: y_n == 0} exp(x_n - x_p))``
  ``     = softplus(logsumexp_{y_n = 0} x_n + logsumexp_{y_p >= 1} -x_p)``

  The second form needs O(N M) memory where the pairwise sum needs
  O(N M^2). Pang et al., "Quasi-Dense Similarity Learning for Multiple
  Object Tracking", CVPR 2021, https://arxiv.org/abs/2006.06664
* **(Margin) L2** (QDTrack's ``loss_track_aux``). Squared error between
  cosine similarities ``x`` and 0/1 targets ``y``, with margins and hard
  negative mining:

  ``x' = clamp(x - pos_margin [y = 1] - neg_margin [y = 0], 0, 1)``,
  ``loss = w (x' - y)^2``

  where only positive margins apply, elements of weight ``<= 0`` count
  with target ``-1`` (their weight makes them vanish), and with
  ``neg_pos_ub > 0`` at most ``neg_pos_ub * #positives`` negatives keep
  their weight: those of largest loss (``hard_mining``) or a random
  subset. ``'mean'`` divides by the number of positive weights.
* **Triplet loss with batch-hard mining** (the ReID configs). Features
  ``f`` (B, D) and identities ``t`` (B,); for each anchor ``i`` the
  furthest positive and the nearest negative in Euclidean distance:

  ``loss = mean_i relu(max_{t_j = t_i} d_ij - min_{t_k != t_i} d_ik + m)``

  with ``d_ij = sqrt(max(|f_i - f_j|^2, 1e-12))``. Hermans et al., "In
  Defense of the Triplet Loss for Person Re-Identification", 2017,
  https://arxiv.org/abs/1703.07737

Everything computes in float32 at least (half inputs are upcast, the
result stays float32, as MMDetection's casts to float make it), with
autocast switched off, and without host synchronisation (the mining is
done by masks and ranks, not by indexing with data-dependent shapes).

Deliberate differences from MMDetection 3.3 (each where its result is
not finite, raises, or mutates the caller's tensors):

* ``L2Loss``/``MarginL2Loss`` never write into ``pred``, ``target`` or
  ``weight`` (MMDetection marks targets and subtracts margins in place,
  which also fails for a leaf ``pred`` that requires grad). Random
  negative sampling draws from torch's generator (MMDetection's from
  NumPy's), so sampled results agree in distribution, not draw by draw;
  hard mining is deterministic and agrees. As in MMDetection, the modules
  ignore a passed ``avg_factor`` (the mean always divides by the number of
  positive weights; a ``UserWarning`` says so, once per module) and refuse
  ``reduction='sum'`` (MMDetection raises there, as it always passes its
  own ``avg_factor``); :func:`margin_l2_loss` takes both.
* ``MultiPosCrossEntropyLoss`` ignores elements whose label is neither
  ``0`` nor ``>= 1`` (negative "ignore" labels); MMDetection counts such
  an element as both a positive and a negative of similarity 0.
* ``TripletLoss`` averages over the anchors that have a negative;
  MMDetection raises when an anchor has none (a batch of one identity)
  and returns NaN for an empty batch, where this gives a connected 0.
  ``hard_mining=False`` raises ``NotImplementedError`` at construction
  (MMDetection: at the first forward). Distances are taken from the
  differences ``f_i - f_j`` (MMDetection: ``|f_i|^2 + |f_j|^2 - 2 f_i.f_j``,
  whose cancellation leaves round-off of about ``sqrt(eps) |f|`` in the
  distance of a sample to itself or to a near duplicate): results agree
  to round-off, except that an anchor alone of its identity has a
  furthest positive of exactly ``1e-6`` (itself), where MMDetection's is
  that round-off.
"""
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import (check_float, check_same_shape, check_tensor,
                      check_weight_shape)
from ..engine import dispatch
from ..errors import LossNotImplementedError, LossValueError
from ..precision import compute_dtype, restore_loss
from ..reduction import Reduction
from ..registry import MODELS
from ..typing_utils import AvgFactor, OptStr, OptTensor
from .base import BaseLoss

__all__ = [
    'margin_l2_loss', 'multi_pos_cross_entropy', 'triplet_loss', 'L2Loss',
    'MarginL2Loss', 'MultiPosCrossEntropyLoss', 'TripletLoss'
]


def _check_number(loss_name: str, argument: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise LossValueError(f'{loss_name}: {argument} must be a number, but '
                             f'got {value!r}')
    return value


# ---------------------------------------------------------------------------
# (margin) L2
# ---------------------------------------------------------------------------
def _negative_ranks(key: Tensor, negative: Tensor) -> Tensor:
    """Each element's rank among the negatives by descending ``key``
    (negatives first; the rank of a non-negative is meaningless)."""
    flat = torch.where(negative, key, float('-inf')).reshape(-1)
    order = torch.argsort(flat, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel(), device=order.device)
    return ranks.view(key.shape)


def margin_l2_loss(pred: Tensor, target: Tensor, weight: OptTensor = None,
                   reduction: str = 'mean', avg_factor: AvgFactor = None, *,
                   neg_pos_ub: int = -1,
                   pos_margin: float = -1,
                   neg_margin: float = -1,
                   hard_mining: bool = False,
                   loss_name: str = 'MarginL2Loss') -> Tensor:
    """Squared error with margins and negative mining (QDTrack).

    ``x' = clamp(pred - pos_margin [y = 1] - neg_margin [y = 0], 0, 1)``
    (a margin applies only when positive), ``loss = (x' - y)^2`` with
    ``y = -1`` where ``weight <= 0``. With ``neg_pos_ub > 0`` the weight of
    all but ``neg_pos_ub * #positives`` negatives is set to 0, keeping the
    negatives of largest loss (``hard_mining``) or random ones.

    Args:
        pred (Tensor): similarities, any shape (N, M) in QDTrack.
        target (Tensor): 1 (same object), 0 (another), any dtype, shape of
            ``pred``.
        weight (Tensor, optional): element-wise weight, broadcast to
            ``pred``; ``<= 0`` drops an element. Defaults to ones.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean;
            defaults to the number of positive weights after mining.
        neg_pos_ub (int): most negatives per positive (``<= 0``: all).
        pos_margin, neg_margin (float): margins subtracted from positive
            and negative similarities when ``> 0``.
        hard_mining (bool): keep the hardest negatives, else random ones.
        loss_name (str): the loss named in errors.

    Returns:
        Tensor: the element-wise loss (shape of ``pred``) for ``'none'``,
        else a scalar; float32 for half inputs.
    """
    check_float(loss_name, 'pred', pred)
    check_tensor(loss_name, 'target', target)
    check_same_shape(loss_name, pred, target)
    check_weight_shape(loss_name, weight, pred.shape)
    rule = Reduction(loss_name, None, reduction, avg_factor).checked()
    dtype = compute_dtype(pred)
    with dispatch.autocast_off(pred):
        x = pred.to(dtype)
        w = torch.ones_like(x) if weight is None else \
            weight.to(dtype).expand(x.shape)
        # dropped elements count with target -1, as in MMDetection
        y = torch.where(w > 0, target.to(dtype), -1.0)
        positive, negative = y == 1, y == 0
        if pos_margin > 0:
            x = x - positive.to(dtype) * pos_margin
        if neg_margin > 0:
            x = x - negative.to(dtype) * neg_margin
        x = x.clamp(0, 1)
        if neg_pos_ub > 0:
            if hard_mining:
                key = (x.detach() - y)**2
            else:
                key = torch.rand(x.shape, device=x.device, dtype=dtype)
            # keeps every negative unless there are more than the bound
            # (for a bound under 1e6, as MMDetection's ratio test)
            limit = positive.sum() * neg_pos_ub
            kept = _negative_ranks(key, negative) < limit
            w = torch.where(negative & ~kept, 0.0, w)
        loss = (x - y)**2
        if avg_factor is None and rule.reduction == 'mean':
            rule = rule._replace(avg_factor=(w > 0).sum().to(dtype))
        return restore_loss(rule._replace(weight=w).apply(loss), pred,
                            rule.reduces)


@MODELS.register_module()
class MarginL2Loss(BaseLoss):
    """L2 loss with margins and hard negative mining (MMDetection 3.3's
    twin, QDTrack's ``loss_track_aux``); see :func:`margin_l2_loss`.

    As MMDetection's: ``'mean'`` divides by the number of positive weights
    after mining, always (a passed ``avg_factor`` is ignored, with one
    ``UserWarning`` per module), ``'none'`` gives the element-wise loss,
    and ``'sum'`` raises (MMDetection passes its own ``avg_factor``, which
    ``'sum'`` refuses); :func:`margin_l2_loss` takes both.

    Args:
        neg_pos_ub (int): most negatives per positive (``-1``: all).
        pos_margin (float): margin on positive similarities (``> 0``).
        neg_margin (float): margin on negative similarities (``> 0``).
        hard_mining (bool): keep the hardest negatives, else random ones.
        reduction (str): ``'none'`` or ``'mean'`` (``'sum'`` raises at the
            forward, as in MMDetection).
        loss_weight (float): factor on the loss.

    Forward: ``(pred, target, weight=None, avg_factor=None,
    reduction_override=None)``; ``avg_factor`` is ignored.

    Paper: Pang et al., "Quasi-Dense Similarity Learning for Multiple Object Tracking", CVPR 2021, https://arxiv.org/abs/2006.06664
    """

    def __init__(self, neg_pos_ub: int = -1, pos_margin: float = -1,
                 neg_margin: float = -1, hard_mining: bool = False,
                 reduction: str = 'mean', loss_weight: float = 1.0):
        super().__init__(reduction, loss_weight)
        self.neg_pos_ub = _check_number(self.loss_name, 'neg_pos_ub',
                                        neg_pos_ub)
        self.pos_margin = _check_number(self.loss_name, 'pos_margin',
                                        pos_margin)
        self.neg_margin = _check_number(self.loss_name, 'neg_margin',
                                        neg_margin)
        self.hard_mining = bool(hard_mining)

    def forward(self, pred: Tensor, target: Tensor, weight: OptTensor = None,
                avg_factor: AvgFactor = None,
                reduction_override: OptStr = None) -> Tensor:
        reduction = self.resolve_reduction(reduction_override)
        if reduction == 'sum':
            raise LossValueError(
                f'{self.loss_name}: reduction "sum" is not defined: the '
                f'loss always averages by the number of positive weights '
                f'(an avg_factor, which "sum" refuses, as in MMDetection '
                f'3.3); use "mean" or "none"')
        if avg_factor is not None:
            self.warn_ignored(
                'avg_factor', avg_factor, 'the mean always divides by the '
                'number of positive weights',
                'mmloss.functional.margin_l2_loss')
        loss = margin_l2_loss(
            pred, target, weight, reduction, None,
            neg_pos_ub=self.neg_pos_ub,
            pos_margin=self.pos_margin, neg_margin=self.neg_margin,
            hard_mining=self.hard_mining, loss_name=self.loss_name)
        return self.apply_loss_weight(loss)

    def extra_repr(self) -> str:
        return (f'neg_pos_ub={self.neg_pos_ub}, pos_margin='
                f'{self.pos_margin}, neg_margin={self.neg_margin}, '
                f'hard_mining={self.hard_mining}, {super().extra_repr()}')


@MODELS.register_module()
class L2Loss(MarginL2Loss):
    """L2 loss (MMDetection 3.3's twin). MMDetection gives it the same
    arguments and the same margin and mining rules as
    :class:`MarginL2Loss`, so it is that loss under its own name; with the
    defaults it is the squared error averaged over the positive weights.

    Paper: Pang et al., "Quasi-Dense Similarity Learning for Multiple Object Tracking", CVPR 2021, https://arxiv.org/abs/2006.06664
    """



# ---------------------------------------------------------------------------
# multi-positive cross-entropy
# ---------------------------------------------------------------------------
def multi_pos_cross_entropy(pred: Tensor, label: Tensor,
                            weight: OptTensor = None, reduction: str = 'mean',
                            avg_factor: AvgFactor = None, *,
                            loss_name: str = 'MultiPosCrossEntropyLoss'
                            ) -> Tensor:
    """Cross-entropy of each row against all of its positives at once.

    ``loss_i = softplus(logsumexp_{n: y_in = 0} x_in
    + logsumexp_{p: y_ip >= 1} -x_ip)``, which is
    ``log(1 + sum_p sum_n exp(x_in - x_ip))``; 0 for a row without a
    positive or without a negative.

    Args:
        pred (Tensor): similarities (N, M).
        label (Tensor): (N, M), ``>= 1`` positive, ``0`` negative, anything
            else ignored; any dtype.
        weight (Tensor, optional): per-row weight (N,).
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean.

    Returns:
        Tensor: (N,) for ``'none'``, else a scalar; float32 for half input.
    """
    check_float(loss_name, 'pred', pred)
    check_tensor(loss_name, 'label', label)
    if pred.dim() != 2:
        raise LossValueError(f'{loss_name}: pred must have shape (N, M), but '
                             f'has shape {tuple(pred.shape)}')
    check_same_shape(loss_name, pred, label, ('pred', 'label'))
    check_weight_shape(loss_name, weight, pred.shape[:1])
    rule = Reduction(loss_name, weight, reduction, avg_factor).checked()
    dtype = compute_dtype(pred)
    with dispatch.autocast_off(pred):
        x = pred.to(dtype)
        # the most negative finite number, not -inf: a row without
        # negatives (or positives) then stays finite all the way through
        # backward, and softplus of its sum is exactly 0
        lowest = torch.finfo(dtype).min
        negatives = torch.logsumexp(torch.where(label == 0, x, lowest), 1)
        positives = torch.logsumexp(torch.where(label >= 1, -x, lowest), 1)
        loss = F.softplus(negatives + positives)
        return restore_loss(rule.cast(dtype).apply(loss), pred,
                            rule.reduces)


@MODELS.register_module()
class MultiPosCrossEntropyLoss(BaseLoss):
    """Multi-positive cross-entropy (MMDetection 3.3's twin, QDTrack's
    ``loss_track``); see :func:`multi_pos_cross_entropy`.

    Args:
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): factor on the loss.

    Forward: ``(cls_score, label, weight=None, avg_factor=None,
    reduction_override=None, **kwargs)``.

    Paper: Pang et al., "Quasi-Dense Similarity Learning for Multiple Object Tracking", CVPR 2021, https://arxiv.org/abs/2006.06664
    """

    def forward(self, cls_score: Tensor, label: Tensor,
                weight: OptTensor = None, avg_factor: AvgFactor = None,
                reduction_override: OptStr = None, **kwargs) -> Tensor:
        loss = multi_pos_cross_entropy(
            cls_score, label, weight,
            self.resolve_reduction(reduction_override), avg_factor,
            loss_name=self.loss_name)
        return self.apply_loss_weight(loss)



# ---------------------------------------------------------------------------
# triplet
# ---------------------------------------------------------------------------
def triplet_loss(inputs: Tensor,
                 targets: Tensor,
                 margin: float = 0.3,
                 reduction: str = 'mean',
                 *,
                 loss_name: str = 'TripletLoss') -> Tensor:
    """Batch-hard triplet loss (Hermans et al., 2017).

    ``loss_i = relu(max_{t_j = t_i} d_ij - min_{t_k != t_i} d_ik + margin)``
    with ``d_ij = sqrt(max(|f_i - f_j|^2, 1e-12))``. An
    anchor without a negative has no triplet: its loss is 0 and the mean
    is over the anchors that have one (0 when none has).

    Args:
        inputs (Tensor): features (B, D).
        targets (Tensor): identities (B,), any dtype.
        margin (float): the ranking margin.
        reduction (str): ``'none'`` (per anchor), ``'mean'`` or ``'sum'``.

    Returns:
        Tensor: (B,) for ``'none'``, else a scalar; float32 for half input.
    """
    check_float(loss_name, 'inputs', inputs)
    check_tensor(loss_name, 'targets', targets)
    if inputs.dim() != 2 or targets.shape != inputs.shape[:1]:
        raise LossValueError(f'{loss_name}: inputs must have shape (B, D) and '
                             f'targets shape (B,), but got '
                             f'{tuple(inputs.shape)} and '
                             f'{tuple(targets.shape)}')
    rule = Reduction(loss_name, None, reduction).checked()
    dtype = compute_dtype(inputs)
    with dispatch.autocast_off(inputs):
        f = inputs.to(dtype)
        if f.shape[0] == 0:  # no anchor (amax/amin refuse empty rows)
            return rule.apply(f.sum(1) * 0)
        # differences, not |f_i|^2 + |f_j|^2 - 2 f_i.f_j: no cancellation
        # for close pairs, and no matmul, whose backward autocast would
        # lower (O(B^2 D) memory instead of O(B^2))
        squared = ((f[:, None, :] - f[None, :, :])**2).sum(-1)
        distance = squared.clamp(min=1e-12).sqrt()
        same = targets[:, None] == targets[None, :]
        # amax/amin share the gradient among ties, as a full max does
        furthest_positive = torch.where(same, distance,
                                        float('-inf')).amax(1)
        nearest_negative = torch.where(same, float('inf'),
                                       distance).amin(1)
        has_negative = ~same.all(1)
        loss = torch.where(
            has_negative,
            F.relu(furthest_positive - nearest_negative + margin), 0.0)
        if rule.reduction == 'mean':
            return loss.sum() / has_negative.sum().clamp(min=1)
        return rule.apply(loss)


@MODELS.register_module()
class TripletLoss(BaseLoss):
    """Triplet loss with batch-hard mining (MMDetection 3.3's twin, used by
    its ReID head); see :func:`triplet_loss`.

    Args:
        margin (float): the ranking margin.
        loss_weight (float): factor on the loss.
        hard_mining (bool): must be True (the only variant MMDetection
            implements; with False the loss builds and its forward raises
            ``NotImplementedError``, as in MMDetection).

    Forward: ``(inputs, targets)``, features (B, D) and identities (B,);
    returns the mean over anchors.

    Paper: Hermans et al., "In Defense of the Triplet Loss for Person Re-Identification", 2017, https://arxiv.org/abs/1703.07737
    """

    def __init__(self,
                 margin: float = 0.3,
                 loss_weight: float = 1.0,
                 hard_mining=True):
        super().__init__('mean', loss_weight)
        self.margin = _check_number(self.loss_name, 'margin', margin)
        # hard_mining=False builds and raises at the forward, as in
        # MMDetection
        self.hard_mining = bool(hard_mining)

    def forward(self, inputs: Tensor, targets: Tensor) -> Tensor:
        if not self.hard_mining:
            raise LossNotImplementedError(
                f'{self.loss_name}: hard_mining=False is not implemented '
                f'(nor in MMDetection); use hard_mining=True')
        return self.apply_loss_weight(
            triplet_loss(inputs, targets, self.margin,
                         loss_name=self.loss_name))

    def extra_repr(self) -> str:
        return (f'margin={self.margin}, hard_mining={self.hard_mining}, '
                f'loss_weight={self.loss_weight}')

