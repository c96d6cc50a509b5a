"""Associative embedding loss: grouping corners by their embeddings.

CornerNet predicts an embedding map for top-left and one for bottom-right
corners; the two corners of an object must get close embeddings and those
of different objects far ones. For an image with ``N`` scalar embedding
pairs ``e_tk``, ``e_bk`` and their means ``e_k = (e_tk + e_bk) / 2``:

``pull = sum_k ((e_tk - e_k)^2 + (e_bk - e_k)^2) / N``

``push = sum_{j != k} relu(margin - |e_j - e_k|) / (N (N - 1))``

with ``margin = 1``; ``pull`` is 0 without objects and ``push`` with fewer
than two. The loss returns ``(pull_weight * sum_images pull,
push_weight * sum_images push)``. CornerNet's maps have one channel, so
``k`` runs over the objects; like MMDetection, a map of ``C > 1`` channels
counts each channel of each object as its own scalar embedding
(``N = C * #objects``: the channels of one object push each other too).

All images are computed at once: the corners of every image are gathered
into a (B, N_max C) batch padded to the most objects of an image, and the
push term is a masked (B, N_max C, N_max C) matrix, instead of MMDetection's
Python loops over images and objects. The corner positions come as Python
lists (CornerHead's targets), so turning them into index tensors is host
work that reads nothing from the device.

Newell et al., "Associative Embedding: End-to-End Learning for Joint
Detection and Grouping", NeurIPS 2017, https://arxiv.org/abs/1611.05424;
Law and Deng, "CornerNet: Detecting Objects as Paired Keypoints", ECCV
2018, https://arxiv.org/abs/1808.01244

Deliberate differences from MMDetection 3.3: half inputs compute in
float32 and the two terms are float32; an empty batch gives zeros
connected to the graph (MMDetection returns the Python floats ``0.0``);
corner positions outside the map raise a ``ValueError`` naming the loss
(MMDetection indexes with them: a negative position silently wraps
around).
"""
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_float, check_positive, check_same_shape
from ..engine import dispatch
from ..errors import LossValueError
from ..precision import compute_dtype
from ..registry import MODELS
from .base import BaseLoss

__all__ = ['associative_embedding_loss', 'AssociativeEmbeddingLoss']


def corner_match_indices(match: Sequence, height: int, width: int,
                         loss_name: str = 'AssociativeEmbeddingLoss'
                         ) -> Tuple[Tensor, Tensor, Tensor]:
    """Padded flat corner indices of CornerHead's ``match`` lists.

    Args:
        match (list): per image, a list of ``[[tl_y, tl_x], [br_y, br_x]]``
            (Python ints or integer tensors) of each object.
        height, width (int): the size of the embedding maps.

    Returns:
        tuple[Tensor]: ``top_left`` and ``bottom_right``, (B, N_max) flat
        indices ``y * width + x`` (0 where padded), and ``valid`` (B,
        N_max), which slots hold an object; all on the CPU.
    """
    counts = [len(objects) for objects in match]
    n_max = max(counts, default=0)
    corners = torch.zeros(len(match), n_max, 4, dtype=torch.long)
    for image, objects in enumerate(match):
        if len(objects):
            try:
                points = torch.as_tensor(objects, dtype=torch.long)
                corners[image, :len(objects)] = points.reshape(-1, 4)
            except (TypeError, ValueError, RuntimeError) as error:
                raise LossValueError(
                    f'{loss_name}: match[{image}] must be a list of '
                    f'[[tl_y, tl_x], [br_y, br_x]] integer pairs '
                    f'({error})') from None
    valid = torch.arange(n_max)[None, :] < torch.tensor(
        counts, dtype=torch.long)[:, None]
    ys, xs = corners[..., 0::2], corners[..., 1::2]
    outside = valid[..., None] & ((ys < 0) | (ys >= height) | (xs < 0)
                                  | (xs >= width))
    if bool(outside.any()):
        image, slot, _ = outside.nonzero()[0].tolist()
        raise LossValueError(
            f'{loss_name}: match[{image}][{slot}] = '
            f'{corners[image, slot].view(2, 2).tolist()} lies outside the '
            f'embedding maps of size (H, W) = ({height}, {width})')
    flat = ys * width + xs
    return flat[..., 0], flat[..., 1], valid


def _gather_corners(embedding: Tensor, index: Tensor,
                    valid: Tensor) -> Tensor:
    """(B, N_max, C) embeddings at flat ``index``, zeros where padded (a
    select, so a padded slot passes no gradient, not even NaN)."""
    batch, channels, height, width = embedding.shape
    flat = embedding.reshape(batch, channels, height * width)
    picked = flat.gather(2, index[:, None, :].expand(-1, channels, -1))
    return torch.where(valid[..., None], picked.transpose(1, 2), 0.0)


def associative_embedding_loss(pred: Tensor, target: Tensor, match: Sequence,
                               pull_weight: float = 0.25,
                               push_weight: float = 0.25,
                               margin: float = 1.0,
                               *,
                               loss_name: str = 'AssociativeEmbeddingLoss'
                               ) -> Tuple[Tensor, Tensor]:
    """Pull and push terms of the associative embedding loss (see the
    module docstring for the formulas).

    Args:
        pred (Tensor): top-left corner embeddings (B, C, H, W).
        target (Tensor): bottom-right corner embeddings (B, C, H, W).
        match (list): per image, the ``[[tl_y, tl_x], [br_y, br_x]]`` map
            positions of each object's corners (CornerHead's
            ``corner_embedding`` target).
        pull_weight, push_weight (float): factors of the two terms.
        margin (float): the push margin (CornerNet: 1).

    Returns:
        tuple[Tensor]: ``(pull, push)``, scalars summed over images,
        float32 for half inputs.
    """
    check_float(loss_name, 'pred', pred)
    check_float(loss_name, 'target', target)
    if pred.dim() != 4:
        raise LossValueError(
            f'{loss_name}: pred must have shape (B, C, H, W), '
            f'but has shape {tuple(pred.shape)}')
    check_same_shape(loss_name, pred, target)
    if not isinstance(match, Sequence) or len(match) != pred.shape[0]:
        got = len(match) if isinstance(match, Sequence) else \
            type(match).__name__
        raise LossValueError(f'{loss_name}: match must list the objects of '
                             f'each of the {pred.shape[0]} images of pred '
                             f'{tuple(pred.shape)}, but got {got}')
    top_left, bottom_right, valid = corner_match_indices(
        match, pred.shape[2], pred.shape[3], loss_name)
    device = pred.device
    top_left = top_left.to(device, non_blocking=True)
    bottom_right = bottom_right.to(device, non_blocking=True)
    valid = valid.to(device, non_blocking=True)
    dtype = compute_dtype(pred, target)
    with dispatch.autocast_off(pred):
        # (B, N_max * C): every channel of every object is one scalar
        # embedding, object-major as MMDetection concatenates them
        tl = _gather_corners(pred.to(dtype), top_left, valid).flatten(1)
        br = _gather_corners(target.to(dtype), bottom_right,
                             valid).flatten(1)
        valid = valid.repeat_interleave(pred.shape[1], dim=1)
        centre = (tl + br) / 2
        count = valid.sum(1).to(dtype)
        pull = ((tl - centre)**2 + (br - centre)**2).sum(1)
        pull = pull / count.clamp(min=1)
        gap = (centre[:, :, None] - centre[:, None, :]).abs()
        size = valid.shape[1]
        pairs = valid[:, :, None] & valid[:, None, :] & ~torch.eye(
            size, dtype=torch.bool, device=device)
        push = torch.where(pairs, F.relu(margin - gap), 0.0).sum((1, 2))
        push = push / (count * (count - 1)).clamp(min=1)
        return pull_weight * pull.sum(), push_weight * push.sum()


@MODELS.register_module()
class AssociativeEmbeddingLoss(BaseLoss):
    """Associative embedding loss of CornerNet (MMDetection 3.3's twin);
    see :func:`associative_embedding_loss`.

    Args:
        pull_weight (float): factor of the pull term (same object).
        push_weight (float): factor of the push term (different objects).

    Forward: ``(pred, target, match)``, the top-left and bottom-right
    embedding maps (B, C, H, W) and CornerHead's ``corner_embedding``
    target; returns ``(pull, push)``.

    Paper: Newell et al., "Associative Embedding: End-to-End Learning for Joint Detection and Grouping", NeurIPS 2017, https://arxiv.org/abs/1611.05424
    Paper: Law and Deng, "CornerNet: Detecting Objects as Paired Keypoints", ECCV 2018, https://arxiv.org/abs/1808.01244
    """

    def __init__(self, pull_weight=0.25, push_weight=0.25):
        super().__init__()
        self.pull_weight = check_positive(self.loss_name, 'pull_weight',
                                          pull_weight, allow_zero=True)
        self.push_weight = check_positive(self.loss_name, 'push_weight',
                                          push_weight, allow_zero=True)

    def forward(self, pred: Tensor, target: Tensor,
                match: Sequence) -> Tuple[Tensor, Tensor]:
        return associative_embedding_loss(pred, target, match,
                                          self.pull_weight, self.push_weight,
                                          loss_name=self.loss_name)

    def extra_repr(self) -> str:
        return (f'pull_weight={self.pull_weight}, '
                f'push_weight={self.push_weight}')
