"""DDQ-DETR's auxiliary loss for the dense queries.

Paper: Zhang et al., "Dense Distinct Query for End-to-End Object Detection", CVPR 2023, https://arxiv.org/abs/2303.12776

Each dense query (a score vector and an ``(x1, y1, x2, y2)`` box in
pixels) is matched one-to-``k`` to the ground truths by a Hungarian
assigner; the matched queries are positives. With ``m_i`` the assigner's
alignment metric of positive ``i`` (``score ** alpha * IoU ** beta``) and
``G(i)`` the positives of the same ground truth, the soft target is::

    t_i = m_i / (max_{G(i)} m + 1e-7) * max_{G(i)} IoU

The classification loss (a quality focal loss of the probabilities
against ``(label, t)``) and the regression loss (GIoU of the positives,
weighted by ``t``) are summed per image and divided by
``max(1, sum t)`` over the batch (averaged over processes), separately for
each term.

Shapes: scores (B, Q, C) probabilities, boxes (B, Q, 4); per image
ground-truth boxes (G, 4) and labels (G,).
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..checks import check_float, check_integer_labels, check_tensor
from ..errors import LossValueError
from ..registry import MODELS

__all__ = ['normalised_alignment_metrics', 'DDQAuxLoss']

#: Added to the largest alignment metric of a ground truth before dividing.
METRIC_EPS = 1e-7


def normalised_alignment_metrics(metrics: Tensor, ious: Tensor,
                                 gt_inds: Tensor, num_gts: int) -> Tensor:
    """The soft targets ``t`` of the positives (see the module docstring).

    Args:
        metrics (Tensor): (P,) alignment metric of each positive.
        ious (Tensor): (P,) IoU of each positive with its ground truth.
        gt_inds (Tensor): (P,) ground truth (0-based) of each positive.
        num_gts (int): number of ground truths.

    Returns:
        Tensor: (P,) ``metrics / (max metric of the gt + 1e-7) * max IoU
        of the gt``; no loop over ground truths, no host sync.
    """
    shape = (num_gts, )
    top_metric = metrics.new_zeros(shape).scatter_reduce(
        0, gt_inds, metrics, 'amax', include_self=False)
    top_iou = ious.new_zeros(shape).scatter_reduce(
        0, gt_inds, ious, 'amax', include_self=False)
    return metrics / (top_metric[gt_inds] + METRIC_EPS) * top_iou[gt_inds]


def _build_assigner(cfg):
    """An assigner from its config (MMDetection's: an unscoped ``type`` is
    looked up in the ``mmdet`` scope, imported on first use, so ``import
    mmloss`` never imports MMDetection), or an assigner object as is."""
    if not isinstance(cfg, dict):
        return cfg
    from mmengine.registry import TASK_UTILS
    cfg = dict(cfg)
    if isinstance(cfg.get('type'), str) and '.' not in cfg['type']:
        cfg['type'] = 'mmdet.' + cfg['type']
    return TASK_UTILS.build(cfg)


def _mean_over_processes(value: Tensor) -> Tensor:
    """``value`` averaged over the processes of a distributed run."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    value = value.clone()
    dist.all_reduce(value.div_(dist.get_world_size()))
    return value


class DDQAuxLoss(nn.Module):
    """The dense-query auxiliary loss of DDQ-DETR (mmdet's ``DDQAuxLoss``).

    Paper: Zhang et al., "Dense Distinct Query for End-to-End Object Detection", CVPR 2023, https://arxiv.org/abs/2303.12776

    As in MMDetection, a plain module that the head creates itself
    (``DDQDETRHead.aux_loss_for_dense``) and calls through :meth:`loss`; it
    is not registered (MMDetection's is not either) and has no
    ``reduction``. The loss configs are built from mmloss's registry, so
    the defaults are mmloss's ``QualityFocalLoss`` and ``GIoULoss`` twins
    (``type='mmdet.X'`` picks MMDetection's); the assigner is
    MMDetection's ``TopkHungarianAssigner`` (an unscoped ``type`` is looked
    up in the ``mmdet`` scope), or any object with ``assign``. The
    positives and negatives are read from the assignment directly (what
    MMDetection's ``PseudoSampler`` does), and the normalisers stay tensors
    (no ``.item()``).

    Args:
        loss_cls (dict): classification loss config (probabilities in).
        loss_bbox (dict): regression loss config.
        train_cfg (dict): ``assigner`` config (or object), ``alpha``,
            ``beta``.
    """

    def __init__(
        self,
        loss_cls=dict(
            type='QualityFocalLoss',
            use_sigmoid=True,
            activated=True,  # use probability instead of logit as input
            beta=2.0,
            loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=2.0),
        train_cfg=dict(
            assigner=dict(type='TopkHungarianAssigner', topk=8),
            alpha=1,
            beta=6),
    ):
        super().__init__()
        if not isinstance(train_cfg, dict) or 'assigner' not in train_cfg:
            raise LossValueError(
                f'DDQAuxLoss: train_cfg must be a dict with an '
                f'assigner, but got {train_cfg!r}')
        self.train_cfg = train_cfg
        self.loss_cls = MODELS.build(loss_cls)
        self.loss_bbox = MODELS.build(loss_bbox)
        self.assigner = _build_assigner(train_cfg['assigner'])

    # ------------------------------------------------------------------
    # targets
    # ------------------------------------------------------------------
    def _get_target_single(self, cls_scores: Tensor, bbox_preds: Tensor,
                           gt_bboxes: Tensor, gt_labels: Tensor,
                           img_meta: dict) -> Tuple[Tensor, ...]:
        """Targets of one image: ``(labels (Q,), label_weights (Q,),
        bbox_targets (Q, 4), alignment targets t (Q,))``; every query is
        labelled (the background ``C`` for the unmatched)."""
        num_queries, num_classes = cls_scores.shape
        labels = bbox_preds.new_full((num_queries, ), num_classes,
                                     dtype=torch.long)
        label_weights = bbox_preds.new_zeros(num_queries,
                                             dtype=torch.float)
        bbox_targets = torch.zeros_like(bbox_preds)
        targets = bbox_preds.new_zeros(num_queries, dtype=torch.float)
        if len(gt_labels) == 0:
            return labels, label_weights, bbox_targets, targets
        # the assigner reads detached float32 copies (half precision in,
        # same matching as in float32)
        result = self.assigner.assign(cls_scores.detach().float(),
                                      bbox_preds.detach().float(),
                                      gt_bboxes.float(), gt_labels, img_meta)
        assigned = result.gt_inds
        pos_inds = (assigned > 0).nonzero().squeeze(-1)
        pos_gt = assigned[pos_inds] - 1
        label_weights[assigned >= 0] = 1.0
        if pos_inds.numel() > 0:
            bbox_targets[pos_inds] = gt_bboxes[pos_gt].to(bbox_targets.dtype)
            labels[pos_inds] = gt_labels[pos_gt].long()
            targets[pos_inds] = normalised_alignment_metrics(
                result.assign_metrics.float(),
                result.max_overlaps.float(), pos_gt, len(gt_labels))
        return labels, label_weights, bbox_targets, targets

    def get_targets(self,
                    cls_scores: Sequence[Tensor],
                    bbox_preds: Sequence[Tensor],
                    gt_bboxes_list: Sequence[Tensor],
                    img_metas: Sequence[dict],
                    gt_labels_list: Optional[Sequence[Tensor]] = None,
                    **kwargs) -> Tuple[List[Tensor], ...]:
        """Per image :meth:`_get_target_single`; four lists of tensors."""
        per_image = [
            self._get_target_single(*inputs) for inputs in zip(
                cls_scores, bbox_preds, gt_bboxes_list, gt_labels_list,
                img_metas)
        ]
        return tuple(list(column) for column in zip(*per_image)) if \
            per_image else ([], [], [], [])

    # ------------------------------------------------------------------
    # losses
    # ------------------------------------------------------------------
    def loss_single(self, cls_score: Tensor, bbox_pred: Tensor,
                    labels: Tensor, label_weights: Tensor,
                    bbox_targets: Tensor, alignment_metrics: Tensor
                    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """One image's summed losses and normalisers: ``(loss_cls,
        loss_bbox, sum t, sum t of the positives)``."""
        bbox_targets = bbox_targets.reshape(-1, 4)
        labels = labels.reshape(-1)
        alignment_metrics = alignment_metrics.reshape(-1)
        label_weights = label_weights.reshape(-1)
        loss_cls = self.loss_cls(cls_score, (labels, alignment_metrics),
                                 label_weights, avg_factor=1.0)
        positive = (labels >= 0) & (labels < cls_score.size(-1))
        pos_inds = positive.nonzero().squeeze(1)
        if pos_inds.numel() > 0:
            pos_weight = alignment_metrics[pos_inds]
            loss_bbox = self.loss_bbox(bbox_pred[pos_inds],
                                       bbox_targets[pos_inds],
                                       weight=pos_weight, avg_factor=1.0)
        else:
            loss_bbox = bbox_pred.sum() * 0
            pos_weight = bbox_targets.new_tensor(0.)
        return loss_cls, loss_bbox, alignment_metrics.sum(), \
            pos_weight.sum()

    def _check_inputs(self, cls_scores, bbox_preds, gt_bboxes,
                      gt_labels, img_metas) -> None:
        name = 'DDQAuxLoss'
        check_float(name, 'cls_scores', cls_scores)
        check_float(name, 'bbox_preds', bbox_preds)
        if cls_scores.dim() != 3 or bbox_preds.dim() != 3 or \
                bbox_preds.shape[:2] != cls_scores.shape[:2] or \
                bbox_preds.size(-1) != 4:
            raise LossValueError(
                f'{name}: cls_scores must have shape (B, Q, C) '
                f'and bbox_preds (B, Q, 4), but got '
                f'{tuple(cls_scores.shape)} and '
                f'{tuple(bbox_preds.shape)}')
        batch = cls_scores.size(0)
        if not (len(gt_bboxes) == len(gt_labels) == len(img_metas) ==
                batch):
            raise LossValueError(
                f'{name}: {batch} images of queries but '
                f'{len(gt_bboxes)} gt_bboxes, {len(gt_labels)} '
                f'gt_labels and {len(img_metas)} img_metas')
        for boxes, labels in zip(gt_bboxes, gt_labels):
            check_tensor(name, 'gt_bboxes', boxes)
            check_tensor(name, 'gt_labels', labels)
            check_integer_labels(name, labels, 'gt_labels')
            if boxes.dim() != 2 or boxes.size(-1) != 4 or \
                    labels.shape != boxes.shape[:1]:
                raise LossValueError(f'{name}: gt_bboxes must be (G, 4) and '
                                     f'gt_labels (G,), but got '
                                     f'{tuple(boxes.shape)} and '
                                     f'{tuple(labels.shape)}')

    def loss(self, cls_scores: Tensor, bbox_preds: Tensor,
             gt_bboxes: Sequence[Tensor], gt_labels: Sequence[Tensor],
             img_metas: Sequence[dict], **kwargs) -> Dict[str, List[Tensor]]:
        """The auxiliary losses of a batch of dense queries.

        Args:
            cls_scores (Tensor): (B, Q, C) probabilities.
            bbox_preds (Tensor): (B, Q, 4) boxes ``(x1, y1, x2, y2)`` in
                pixels.
            gt_bboxes (list[Tensor]): per image (G, 4) boxes in pixels.
            gt_labels (list[Tensor]): per image (G,) labels.
            img_metas (list[dict]): per image meta information.

        Returns:
            dict: ``aux_loss_cls`` and ``aux_loss_bbox``, each a list of
            per-image losses, divided by ``max(1, sum t)`` over the batch
            (of all queries for the first, of the positives for the
            second).
        """
        self._check_inputs(cls_scores, bbox_preds, gt_bboxes, gt_labels,
                           img_metas)
        labels, label_weights, bbox_targets, targets = self.get_targets(
            cls_scores, bbox_preds, gt_bboxes, img_metas,
            gt_labels_list=gt_labels)
        per_image = [
            self.loss_single(*inputs) for inputs in zip(
                cls_scores, bbox_preds, labels, label_weights, bbox_targets,
                targets)
        ]
        losses_cls, losses_bbox, cls_factors, bbox_factors = zip(*per_image)
        cls_factor = _mean_over_processes(sum(cls_factors)).clamp(min=1)
        bbox_factor = _mean_over_processes(sum(bbox_factors)).clamp(min=1)
        return dict(aux_loss_cls=[loss / cls_factor for loss in losses_cls],
                    aux_loss_bbox=[loss / bbox_factor
                                   for loss in losses_bbox])
