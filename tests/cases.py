"""The inputs of every registered loss, shared by the property tests and
the differential path harness.

For each loss a :class:`LossCase` says how to draw legitimate inputs
(float64 by default), which weight shape it takes, and what a perfect
prediction is. A test checks that every registered loss has a case, so a
new loss cannot skip the suites built on them.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from mmloss.registry import MODELS
from tests.helpers import jitter_boxes, random_boxes


@dataclass
class LossCase:
    """How to feed one loss: ``make(seed, n) -> (args, kwargs)``."""
    make: Callable
    cfg: dict = field(default_factory=dict)
    # Shape of a ``weight=`` argument for n samples, None if it takes none.
    weight_shape: Optional[Callable] = None
    # ``perfect(args) -> args`` with the prediction made exact, if any.
    perfect: Optional[Callable] = None
    perfect_value: float = 0.0
    # Largest loss per element allowed for a perfect prediction: the IoU
    # family's eps in inter / (union + eps) leaves about eps / area.
    perfect_tolerance: float = 1e-6
    box: bool = False
    scale_invariant: bool = False
    # False where the loss itself averages before 'none' is reduced.
    sum_is_sum_of_none: bool = True
    # ``call(loss, args, kwargs) -> Tensor`` for a loss whose forward takes
    # no reduction_override/weight/avg_factor (as in mmdet): it drops them.
    call: Optional[Callable] = None
    # The most rows a test feeds it, for losses whose cost grows with the
    # square of the rows (None: no limit).
    max_rows: Optional[int] = None


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def boxes(seed, n):
    generator = _gen(seed)
    target = random_boxes(n, generator, 100.0, torch.float64)
    return (jitter_boxes(target, generator, 0.4), target), {}


def box_label_weight(seed, n):
    (pred, target), _ = boxes(seed, n)
    return (pred, target, torch.ones(n, 4, dtype=torch.float64)), {}


def logits_and_labels(num_classes, background=True):

    def make(seed, n):
        generator = _gen(seed)
        logits = torch.randn(n, num_classes, generator=generator,
                             dtype=torch.float64) * 4
        high = num_classes + 1 if background else num_classes
        labels = torch.randint(0, high, (n,), generator=generator)
        return (logits, labels), {}

    return make


def ghmc_inputs(seed, n):
    (logits, labels), _ = logits_and_labels(5)(seed, n)
    # integer labels take a per-anchor label_weight, as in mmdet
    return (logits, labels, torch.ones(n, dtype=torch.float64)), {}


def soft_scores(seed, n, num_classes=5):
    generator = _gen(seed)
    logits = torch.randn(n, num_classes, generator=generator,
                         dtype=torch.float64) * 4
    scores = torch.rand(n, num_classes, generator=generator,
                        dtype=torch.float64)
    scores = scores * (torch.rand(n, num_classes, generator=generator) <
                       0.2)
    return logits, scores


def varifocal_inputs(seed, n):
    return soft_scores(seed, n), {}


def qfl_inputs(seed, n):
    (logits, labels), _ = logits_and_labels(5)(seed, n)
    scores = torch.rand(n, generator=_gen(seed + 1), dtype=torch.float64)
    return (logits, (labels, scores)), {}


def dfl_inputs(seed, n, reg_max=8):
    generator = _gen(seed)
    logits = torch.randn(n, reg_max + 1, generator=generator,
                         dtype=torch.float64)
    target = torch.rand(n, generator=generator,
                        dtype=torch.float64) * (reg_max - 0.01)
    return (logits, target), {}


def gaussian_inputs(seed, n):
    generator = _gen(seed)
    pred = torch.rand(n, 3, 6, 6, generator=generator,
                      dtype=torch.float64).clamp(1e-4, 1 - 1e-4)
    target = torch.rand(n, 3, 6, 6, generator=generator,
                        dtype=torch.float64)
    target = torch.where(target > 0.95, torch.ones_like(target), target * 0.9)
    return (pred, target), {}


def seesaw_inputs(seed, n, num_classes=4):
    generator = _gen(seed)
    logits = torch.randn(n, num_classes + 2, generator=generator,
                         dtype=torch.float64) * 3
    labels = torch.randint(0, num_classes + 1, (n,), generator=generator)
    return (logits, labels), {}


def eqlv2_inputs(seed, n, num_classes=4):
    # num_classes + 1 channels: the classes, then the objectness
    generator = _gen(seed)
    logits = torch.randn(n, num_classes + 1, generator=generator,
                         dtype=torch.float64) * 3
    labels = torch.randint(0, num_classes + 1, (n,), generator=generator)
    return (logits, labels), {}


def similarities(seed, n, width=6):
    """Cosine-like similarities (n, width) and 0/1 match targets."""
    generator = _gen(seed)
    pred = torch.rand(n, width, generator=generator,
                      dtype=torch.float64) * 2.2 - 1.1
    target = (torch.rand(n, width, generator=generator) < 0.3).int()
    return (pred, target), {}


def multi_pos_inputs(seed, n):
    (pred, target), _ = similarities(seed, n)
    return (pred * 4, target), {}


def perfect_similarities(args):
    return (args[1].to(args[0].dtype), ) + tuple(args[1:])


def perfect_multi_pos(args):
    return (args[1].to(args[0].dtype) * 200 - 100, ) + tuple(args[1:])


def triplet_inputs(seed, n):
    """Features (n, 8) of about three samples per identity."""
    generator = _gen(seed)
    features = torch.randn(n, 8, generator=generator, dtype=torch.float64)
    identities = torch.arange(n) % max(1, (n + 2) // 3)
    return (features, identities), {}


def corner_embedding_inputs(seed, n, size=8):
    """Corner embedding maps of n images and up to 4 objects each."""
    generator = _gen(seed)
    tl = torch.randn(n, 1, size, size, generator=generator,
                     dtype=torch.float64)
    br = torch.randn(n, 1, size, size, generator=generator,
                     dtype=torch.float64)
    counts = torch.randint(0, 5, (n, ), generator=generator).tolist()
    corners = torch.randint(0, size, (n, 4, 2, 2),
                            generator=generator).tolist()
    match = [corners[i][:count] for i, count in enumerate(counts)]
    return (tl, br, match), {}


def plain_call(loss, args, kwargs):
    return loss(*args)


def pull_and_push(loss, args, kwargs):
    return torch.stack(loss(*args))


def kd_inputs(seed, n):
    generator = _gen(seed)
    return (torch.randn(n, 6, generator=generator, dtype=torch.float64),
            torch.randn(n, 6, generator=generator, dtype=torch.float64)), {}


def dice_inputs(seed, n):
    generator = _gen(seed)
    pred = torch.randn(n, 8, 8, generator=generator, dtype=torch.float64)
    target = (torch.rand(n, 8, 8, generator=generator) > 0.5).double()
    return (pred, target), {}


def same_boxes(args):
    return (args[1].clone(), ) + tuple(args[1:])


def perfect_logits(args):
    logits, labels = args[0], args[1]
    one_hot = torch.zeros_like(logits)
    valid = labels < logits.shape[1]
    one_hot[valid.nonzero()[:, 0], labels[valid]] = 1
    return (200 * one_hot - 100, ) + tuple(args[1:])


def per_sample(n):
    return (n, )


def per_box(n):
    return (n, 4)


def per_logit(n):
    return (n, 5)


IOU_SCALE_INVARIANT = dict(box=True, scale_invariant=True,
                           weight_shape=per_sample, perfect=same_boxes)
BOX_NOT_SCALE_INVARIANT = dict(box=True, weight_shape=per_sample,
                               perfect=same_boxes)
ELEMENTWISE_BOX = dict(box=True, weight_shape=per_box, perfect=same_boxes)

CASES = {
    # IoU family (mmdet twins)
    'IoULoss': LossCase(boxes, **IOU_SCALE_INVARIANT),
    'GIoULoss': LossCase(boxes, **IOU_SCALE_INVARIANT),
    'DIoULoss': LossCase(boxes, **IOU_SCALE_INVARIANT),
    'CIoULoss': LossCase(boxes, **IOU_SCALE_INVARIANT),
    'SIoULoss': LossCase(boxes, **IOU_SCALE_INVARIANT),
    # smooth_point is in pixels: not scale-invariant
    'EIoULoss': LossCase(boxes, **BOX_NOT_SCALE_INVARIANT),
    # eps in (w - 2|dx|) / (w + 2|dx| + eps) leaves ~(eps / w)^2 / (2 beta)
    'BoundedIoULoss': LossCase(boxes, perfect_tolerance=1e-5,
                               **ELEMENTWISE_BOX),
    # IoU family beyond mmdet
    'AlphaIoULoss': LossCase(boxes, cfg=dict(mode='ciou'),
                             **IOU_SCALE_INVARIANT),
    'WiseIoULoss': LossCase(boxes, **IOU_SCALE_INVARIANT),
    'FocalEIoULoss': LossCase(boxes, **IOU_SCALE_INVARIANT),
    'VariantIoULoss': LossCase(
        boxes, cfg=dict(mode='ciou', inner_ratio=0.8, focaler=(0.0, 0.95)),
        **IOU_SCALE_INVARIANT),
    # normalised by the image size: not scale-invariant
    'MPDIoULoss': LossCase(boxes, **BOX_NOT_SCALE_INVARIANT),
    # the dataset constant is in pixels: not scale-invariant; eps under the
    # square root leaves 1 - exp(-sqrt(eps) / C), about 2.5e-5, at a match
    'NWDLoss': LossCase(boxes, perfect_tolerance=3e-5,
                        **BOX_NOT_SCALE_INVARIANT),
    # L1 family
    'L1Loss': LossCase(boxes, **ELEMENTWISE_BOX),
    'SmoothL1Loss': LossCase(boxes, **ELEMENTWISE_BOX),
    'BalancedL1Loss': LossCase(boxes, **ELEMENTWISE_BOX),
    'MSELoss': LossCase(boxes, **ELEMENTWISE_BOX),
    # GHM divides by the number of valid samples in every reduction but
    # 'none' (mmdet's avg_factor=tot), so 'sum' is not the sum of 'none'.
    'GHMR': LossCase(box_label_weight, box=True, perfect=same_boxes,
                     perfect_tolerance=1e-6, sum_is_sum_of_none=False),
    # classification
    'FocalLoss': LossCase(logits_and_labels(5), weight_shape=per_sample,
                          perfect=perfect_logits),
    'Poly1FocalLoss': LossCase(logits_and_labels(5),
                               weight_shape=per_sample,
                               perfect=perfect_logits),
    'GHMC': LossCase(ghmc_inputs, cfg=dict(bins=10, momentum=0.75),
                     sum_is_sum_of_none=False),
    'CrossEntropyLoss': LossCase(logits_and_labels(5, background=False),
                                 weight_shape=per_sample),
    'CrossEntropyCustomLoss': LossCase(
        logits_and_labels(5, background=False), cfg=dict(num_classes=5),
        weight_shape=per_sample),
    'VarifocalLoss': LossCase(varifocal_inputs, weight_shape=per_logit),
    'QualityFocalLoss': LossCase(qfl_inputs, weight_shape=per_sample),
    'DistributionFocalLoss': LossCase(dfl_inputs, weight_shape=per_sample),
    'GaussianFocalLoss': LossCase(gaussian_inputs,
                                  weight_shape=lambda n: (n, 3, 6, 6)),
    # with return_dict, 'none' gives per-anchor objectness and per-positive
    # class terms: value() concatenates them.
    'SeesawLoss': LossCase(seesaw_inputs, cfg=dict(num_classes=4)),
    'FocalCustomLoss': LossCase(logits_and_labels(5),
                                cfg=dict(num_classes=5),
                                weight_shape=per_sample,
                                perfect=perfect_logits),
    # mmdet's forward ignores reduction_override, weight and avg_factor
    # (always sum / N): so does ours, so the case drops them
    'EQLV2Loss': LossCase(eqlv2_inputs, cfg=dict(num_classes=4),
                          call=plain_call),
    # tracking and ReID embeddings
    'MultiPosCrossEntropyLoss': LossCase(multi_pos_inputs,
                                         weight_shape=per_sample,
                                         perfect=perfect_multi_pos),
    # mmdet ignores avg_factor and refuses 'sum' here (its own avg_factor):
    # the case calls the default mean (reductions: tests/test_tracking.py)
    'L2Loss': LossCase(similarities, perfect=perfect_similarities,
                       call=plain_call),
    # QDTrack's loss_track_aux (hard mining is deterministic)
    'MarginL2Loss': LossCase(
        similarities, cfg=dict(neg_pos_ub=3, pos_margin=0, neg_margin=0.1,
                               hard_mining=True),
        perfect=perfect_similarities, call=plain_call),
    # no reduction, weight or avg_factor in mmdet's forward: one mean
    # pairwise distances of the batch: B^2 D memory (ReID batches: 64-256)
    'TripletLoss': LossCase(triplet_inputs, call=plain_call, max_rows=4097),
    # returns (pull, push) summed over images: value() stacks them
    'AssociativeEmbeddingLoss': LossCase(corner_embedding_inputs,
                                         call=pull_and_push),
    'KnowledgeDistillationKLDivLoss': LossCase(kd_inputs,
                                               weight_shape=per_sample),
    'DiceLoss': LossCase(dice_inputs, weight_shape=per_sample),
}

REGISTERED = sorted(MODELS.module_dict)


def build(name, **overrides):
    cfg = dict(CASES[name].cfg, **overrides)
    return MODELS.build(dict(type=name, **cfg)).double()


def inputs(name, seed, n):
    args, kwargs = CASES[name].make(seed, n)
    return tuple(a.requires_grad_() if i == 0 else a
                 for i, a in enumerate(args)), kwargs


def value(loss, args, **kwargs):
    case = CASES.get(type(loss).__name__)
    if case is not None and case.call is not None:
        return case.call(loss, args, kwargs)
    out = loss(*args, **kwargs)
    if isinstance(out, dict):
        out = torch.cat([term.reshape(-1) for term in out.values()])
    return out
