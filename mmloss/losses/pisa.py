"""PISA: prime-sample attention, ISR-P re-weighting and the CARL loss.

Paper: Cao et al., "Prime Sample Attention in Object Detection", CVPR 2020, https://arxiv.org/abs/1904.04821

PISA ranks the positive samples by their importance and re-weights the
classification and regression losses by that rank.

* :func:`isr_p` (importance-based sample reweighting, positive part) ranks
  every positive by IoU-HLR: first by its IoU rank among the samples of
  the same ground-truth box, then by IoU within that local rank, among the
  samples of its class. With ``r`` the rank (0 = most important) and
  ``n_max`` the largest number of positives of any class::

      w_i = (bias + (1 - bias) * lw_i * (n_max - r_i) / n_max) ** k
      w_i *= sum(L_i * lw_i) / sum(L_i * w_i)   (same total loss)

  where ``lw`` are the old label weights and ``L`` the positives'
  classification losses (``reduction_override='none'``).
* :func:`carl_loss` (classification-aware regression loss) weights each
  positive's regression loss by its classification score ``s_i``::

      c_i = (bias + (1 - bias) * s_i) ** k,   c_i *= n_pos / sum(c)
      L_carl = sum_i c_i * L_reg_i / avg_factor

  The gradient flows into the classifier through ``s_i``.

Shapes: scores (N, C), labels (N,) with the positives in
``[0, num_class)``, box deltas (N, 4) or class-specific (N, 4 * C'), RoIs
(N, 4) or (N, 5) (batch index first). The head's box coder, loss modules
and sampling results are arguments: this module imports no MMDetection.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..checks import check_float, check_integer_labels, check_tensor
from ..errors import LossValueError
from ..geometry import aligned_iou
from ..precision import compute_dtype, to_dtype

__all__ = ['rank_within_groups', 'iou_hlr_rank', 'isr_p', 'carl_loss']

#: The floor of the union in the IoU of a decoded box and its target (the
#: ``eps`` of MMDetection's ``bbox_overlaps``).
IOU_EPS = 1e-6


def rank_within_groups(key: Tensor, groups: Tensor) -> Tensor:
    """The rank of every element within its group, by ``key`` descending.

    Rank 0 is the largest key of its group. Two stable sorts (by key, then
    by group) order the elements group by group, largest key first; the
    rank is the position minus the group's first position. No loop, no
    host sync.

    Args:
        key (Tensor): (n,) values to rank.
        groups (Tensor): (n,) integer group of each element.

    Returns:
        Tensor: (n,) integer ranks.
    """
    order = torch.sort(key, descending=True, stable=True).indices
    order = order[torch.sort(groups[order], stable=True).indices]
    sorted_groups = groups[order].contiguous()
    position = torch.arange(order.numel(), device=key.device)
    first = torch.searchsorted(sorted_groups, sorted_groups)
    return torch.empty_like(position).scatter_(0, order, position - first)


def iou_hlr_rank(ious: Tensor, labels: Tensor,
                 gt_inds: Tensor) -> Tuple[Tensor, Tensor]:
    """IoU-HLR: the hierarchical local rank of every positive sample.

    Within each (label, ground truth) group the samples are ranked by IoU
    (``r_local``); the key ``iou + n_max - r_local`` then ranks them within
    their label, so a lower local rank always comes first and equal local
    ranks are ordered by IoU.

    Args:
        ious (Tensor): (n,) IoU of each positive's box with its target.
        labels (Tensor): (n,) class of each positive.
        gt_inds (Tensor): (n,) ground truth of each positive.

    Returns:
        tuple[Tensor, Tensor]: the ranks (n,) and ``n_max`` (a 0-dim
        tensor, the largest number of positives of one class).
    """
    most = torch.bincount(labels).max()
    local_groups = labels * (gt_inds.max() + 1) + gt_inds
    local_rank = rank_within_groups(ious, local_groups)
    # the same float arithmetic as MMDetection, so ties break alike
    key = ious + (most - local_rank.float())
    return rank_within_groups(key, labels), most


def _merged_gt_inds(sampling_results: Sequence) -> Tensor:
    """The assigned ground truth of every positive, over the batch.

    Each image's indices are shifted by one plus the largest index of the
    last earlier image with positives, as MMDetection does. (That offset
    does not accumulate over images, so images 1 and 3 may share indices;
    the twin keeps it, to rank exactly as MMDetection.)
    """
    merged = []
    offset = 0
    for result in sampling_results:
        gt_inds = result.pos_assigned_gt_inds
        merged.append(gt_inds + offset)
        if gt_inds.numel() != 0:
            offset = gt_inds.max() + 1
    return torch.cat(merged)


def _positive_deltas(bbox_pred: Tensor, pos_inds: Tensor,
                     pos_labels: Tensor) -> Tensor:
    """The deltas of the positives (n, 4): of their class when class
    specific (N, 4 * C')."""
    if bbox_pred.size(-1) > 4:
        bbox_pred = bbox_pred.view(bbox_pred.size(0), -1, 4)
        return bbox_pred[pos_inds, pos_labels]
    return bbox_pred[pos_inds]


def _check_scores_labels(name: str, cls_score: Tensor, labels: Tensor,
                         bbox_pred: Tensor, bbox_targets: Tensor) -> None:
    """Float (N, C) scores, integer (N,) labels, (N, 4k) deltas and
    (N, 4) targets."""
    check_float(name, 'cls_score', cls_score)
    check_tensor(name, 'labels', labels)
    check_integer_labels(name, labels, 'labels')
    check_float(name, 'bbox_pred', bbox_pred)
    check_float(name, 'bbox_targets', bbox_targets)
    rows = labels.shape[0] if labels.dim() == 1 else None
    if cls_score.dim() != 2 or labels.dim() != 1 or \
            cls_score.size(0) != rows or bbox_pred.dim() != 2 or \
            bbox_pred.size(0) != rows or bbox_pred.size(1) % 4 != 0 or \
            bbox_pred.size(1) == 0 or \
            tuple(bbox_targets.shape) != (rows, 4):
        raise LossValueError(
            f'{name}: cls_score must have shape (N, C), labels (N,), '
            f'bbox_pred (N, 4) or (N, 4 * C) and bbox_targets (N, 4), but '
            f'got cls_score {tuple(cls_score.shape)}, labels '
            f'{tuple(labels.shape)}, bbox_pred {tuple(bbox_pred.shape)} and '
            f'bbox_targets {tuple(bbox_targets.shape)}')


def isr_p(cls_score: Tensor,
          bbox_pred: Tensor,
          bbox_targets: Tuple[Tensor],
          rois: Tensor,
          sampling_results: List,
          loss_cls: nn.Module,
          bbox_coder,
          k: float = 2,
          bias: float = 0,
          num_class: int = 80) -> tuple:
    """Importance-based sample reweighting of the positives (ISR-P).

    New label weights for the positives from their IoU-HLR rank
    (:func:`iou_hlr_rank`), scaled so that the positives' weighted
    classification loss keeps its total (see the module docstring). The
    same signature and values as MMDetection's ``isr_p``; unlike it, the
    ``label_weights`` passed in are left unchanged (a new tensor is
    returned).

    Args:
        cls_score (Tensor): (N, C) class scores (read without gradient).
        bbox_pred (Tensor): (N, 4) or (N, 4 * C') box deltas.
        bbox_targets (tuple[Tensor]): ``(labels (N,), label_weights (N,),
            bbox_targets (N, 4), bbox_weights (N, 4))``.
        rois (Tensor): (N, 4) anchors or (N, 5) RoIs (batch index first).
        sampling_results (list): per image, an object with
            ``pos_assigned_gt_inds`` (the positives' ground truths, in the
            order of the positive rows).
        loss_cls (nn.Module): the head's classification loss; called with
            ``reduction_override='none'``.
        bbox_coder: the head's box coder (``decode(rois, deltas)``).
        k (float): exponent of the mapping. Defaults to 2.
        bias (float): shift of the mapping. Defaults to 0.
        num_class (int): number of classes; labels in ``[0, num_class)``
            are positives. Defaults to 80.

    Returns:
        tuple[Tensor]: ``(labels, label_weights, bbox_targets,
        bbox_weights)`` with the positives' label weights replaced (the
        inputs themselves when there is no positive).
    """
    name = 'isr_p'
    if not isinstance(bbox_targets, (tuple, list)) or len(bbox_targets) != 4:
        raise LossValueError(
            f'{name}: bbox_targets must be a tuple (labels, '
            f'label_weights, bbox_targets, bbox_weights), but '
            f'got {type(bbox_targets).__name__}')
    labels, label_weights, box_targets, bbox_weights = bbox_targets
    _check_scores_labels(name, cls_score, labels, bbox_pred, box_targets)
    check_float(name, 'label_weights', label_weights)
    check_float(name, 'rois', rois)
    if label_weights.shape != labels.shape or rois.dim() != 2 or \
            rois.size(0) != labels.size(0) or rois.size(1) not in (4, 5):
        raise LossValueError(f'{name}: label_weights must have shape (N,) and '
                             f'rois (N, 4) or (N, 5) for labels of shape '
                             f'{tuple(labels.shape)}, but got label_weights '
                             f'{tuple(label_weights.shape)} and rois '
                             f'{tuple(rois.shape)}')
    pos_inds = ((labels >= 0) & (labels < num_class)).nonzero().reshape(-1)
    if pos_inds.numel() == 0:
        return labels, label_weights, box_targets, bbox_weights
    pos_labels = labels[pos_inds]
    gt_inds = _merged_gt_inds(sampling_results)
    if gt_inds.numel() != pos_inds.numel():
        raise LossValueError(f'{name}: sampling_results assign '
                             f'{gt_inds.numel()} positives, but labels hold '
                             f'{pos_inds.numel()} in [0, {num_class})')

    # the IoU of each positive's decoded prediction with its decoded target
    pos_rois = rois[pos_inds]
    if rois.size(-1) == 5:
        pos_rois = pos_rois[:, 1:]
    deltas = _positive_deltas(bbox_pred.detach(), pos_inds, pos_labels)
    decoded = bbox_coder.decode(pos_rois, deltas.reshape(-1, 4))
    target = bbox_coder.decode(pos_rois, box_targets[pos_inds].reshape(-1, 4))
    dtype = compute_dtype(decoded, target)
    ious = aligned_iou(to_dtype(decoded, dtype), to_dtype(target, dtype),
                       IOU_EPS, floor=True)

    rank, most = iou_hlr_rank(ious, pos_labels, gt_inds)
    old_weights = label_weights[pos_inds]
    weights = old_weights * ((most - rank.float()) / most)
    weights = (bias + weights * (1 - bias)).pow(k)

    # keep the positives' total classification loss
    pos_loss = loss_cls(cls_score.detach()[pos_inds], pos_labels,
                        reduction_override='none')
    if pos_loss.dim() > 1:
        old_weights, weights_2d = old_weights[:, None], weights[:, None]
    else:
        weights_2d = weights
    ratio = (pos_loss * old_weights).sum() / (pos_loss * weights_2d).sum()
    new_label_weights = label_weights.clone()
    new_label_weights[pos_inds] = (weights * ratio).to(label_weights.dtype)
    return labels, new_label_weights, box_targets, bbox_weights


def carl_loss(cls_score: Tensor,
              labels: Tensor,
              bbox_pred: Tensor,
              bbox_targets: Tensor,
              loss_bbox: nn.Module,
              k: float = 1,
              bias: float = 0.2,
              avg_factor: Optional[int] = None,
              sigmoid: bool = False,
              num_class: int = 80) -> dict:
    """Classification-aware regression loss (CARL).

    ``L = sum_i c_i * L_reg_i / avg_factor`` with ``c_i = (bias + (1 -
    bias) s_i) ** k`` normalised to sum to the number of positives, ``s_i``
    the positive's score of its class (softmax, or sigmoid if ``sigmoid``)
    and ``L_reg`` the head's regression loss of its deltas
    (``reduction_override='none'``). The same signature and values as
    MMDetection's ``carl_loss``. A regression loss that gives one value
    per box (N,) (the IoU family) is weighted per box; MMDetection would
    broadcast it to an (n, n) matrix.

    Args:
        cls_score (Tensor): (N, C) class logits.
        labels (Tensor): (N,) labels; ``[0, num_class)`` are positives.
        bbox_pred (Tensor): (N, 4) or (N, 4 * C') box deltas.
        bbox_targets (Tensor): (N, 4) regression targets.
        loss_bbox (nn.Module): the head's regression loss.
        k (float): exponent of the mapping. Defaults to 1.
        bias (float): shift of the mapping. Defaults to 0.2.
        avg_factor (float, optional): denominator; defaults to ``N`` (all
            rows, not only the positives).
        sigmoid (bool): the scores are sigmoid logits (else softmax).
        num_class (int): number of classes. Defaults to 80.

    Returns:
        dict: ``{'loss_carl': (1,) tensor}``, float32 for half inputs
        (``0`` connected to both predictions when there is no positive).
    """
    name = 'carl_loss'
    _check_scores_labels(name, cls_score, labels, bbox_pred, bbox_targets)
    pos_inds = ((labels >= 0) & (labels < num_class)).nonzero().reshape(-1)
    dtype = compute_dtype(cls_score, bbox_pred)
    if pos_inds.numel() == 0:
        empty = cls_score.sum() * 0 + bbox_pred.sum() * 0
        return dict(loss_carl=to_dtype(empty, dtype)[None])
    pos_labels = labels[pos_inds]
    logits = to_dtype(cls_score, dtype)
    scores = logits.sigmoid() if sigmoid else logits.softmax(-1)
    pos_scores = scores[pos_inds, pos_labels]
    weights = (bias + (1 - bias) * pos_scores).pow(k)
    weights = weights * (pos_scores.size(0) / weights.sum())
    if avg_factor is None:
        avg_factor = bbox_targets.size(0)
    deltas = _positive_deltas(bbox_pred, pos_inds, pos_labels)
    loss_reg = loss_bbox(deltas, bbox_targets[pos_inds],
                         reduction_override='none')
    loss_reg = to_dtype(loss_reg, torch.promote_types(loss_reg.dtype,
                                                      dtype)) / avg_factor
    if loss_reg.dim() > 1:
        weights = weights[:, None]
    return dict(loss_carl=(loss_reg * weights).sum()[None])
