"""Property tests over every registered loss (hypothesis, derandomised).

For each loss a :class:`LossCase` says how to draw legitimate inputs; the
properties then hold for all of them:

* finite, non-negative value and finite gradients, empty inputs included;
* zero for a perfect prediction where the loss has one;
* box losses: invariant to translating both boxes, and to scaling both boxes
  where the loss is scale-invariant;
* ``'sum'`` equals the sum of ``'none'``; a weight of ones equals no weight;
  ``'mean'`` with ``avg_factor=k`` equals ``sum / k``.

A test also checks that every registered loss has a case, so a new loss
cannot skip these properties.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmloss.registry import MODELS
from tests.helpers import assert_close, jitter_boxes, random_boxes

PROPERTY_SETTINGS = settings(max_examples=15, deadline=None,
                             derandomize=True, database=None)
SEEDS = st.integers(0, 2**16)
SIZES = st.integers(0, 24)


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
    out = loss(*args, **kwargs)
    if isinstance(out, dict):
        out = torch.cat([term.reshape(-1) for term in out.values()])
    return out


def test_every_registered_loss_has_a_property_case():
    assert set(REGISTERED) <= set(CASES), sorted(set(REGISTERED) - set(CASES))


@pytest.mark.parametrize('name', REGISTERED)
@PROPERTY_SETTINGS
@given(seed=SEEDS, n=SIZES)
def test_finite_non_negative_with_finite_gradients(name, seed, n):
    case = CASES[name]
    args, kwargs = inputs(name, seed, n)
    for reduction in ('mean', 'none') if not case.sum_is_sum_of_none else (
            'mean', 'sum', 'none'):
        out = value(build(name), args, reduction_override=reduction,
                    **kwargs)
        assert torch.isfinite(out).all(), (reduction, out)
        assert (out >= -1e-12).all(), (reduction, out)
        grad, = torch.autograd.grad(out.sum(), args[0], allow_unused=True)
        assert grad is None or torch.isfinite(grad).all(), reduction


@pytest.mark.parametrize(
    'name', [n for n in REGISTERED if CASES.get(n) and CASES[n].perfect])
@PROPERTY_SETTINGS
@given(seed=SEEDS, n=st.integers(1, 24))
def test_perfect_prediction_gives_the_minimum(name, seed, n):
    args, kwargs = CASES[name].make(seed, n)
    perfect = CASES[name].perfect(args)
    out = value(build(name), perfect, reduction_override='none', **kwargs)
    assert out.min().item() >= CASES[name].perfect_value - 1e-12
    assert out.max().item() <= (CASES[name].perfect_value +
                                CASES[name].perfect_tolerance), out


@pytest.mark.parametrize('name',
                         [n for n in REGISTERED if CASES.get(n) and CASES[n].box])
@PROPERTY_SETTINGS
@given(seed=SEEDS, n=st.integers(1, 24),
       offset=st.floats(-1000, 1000, allow_nan=False),
       # boxes stay >= 0.5 px wide, so eps / area stays below ~1e-5
       scale=st.floats(0.5, 20, allow_nan=False))
def test_box_losses_are_translation_and_scale_invariant(name, seed, n,
                                                         offset, scale):
    args, kwargs = CASES[name].make(seed, n)
    pred, target, rest = args[0], args[1], args[2:]
    reference = value(build(name), args, reduction_override='none',
                      **kwargs)
    moved = value(build(name), (pred + offset, target + offset) + rest,
                  reduction_override='none', **kwargs)
    assert_close(moved, reference, rtol=1e-6, atol=1e-9,
                 what=f'{name} translated by {offset}')
    if CASES[name].scale_invariant:
        scaled = value(build(name), (pred * scale, target * scale) + rest,
                       reduction_override='none', **kwargs)
        assert_close(scaled, reference, rtol=1e-5, atol=1e-8,
                     what=f'{name} scaled by {scale}')


@pytest.mark.parametrize('name', REGISTERED)
@PROPERTY_SETTINGS
@given(seed=SEEDS, n=st.integers(1, 24))
def test_reductions_weights_and_avg_factor_agree(name, seed, n):
    case = CASES[name]
    args, kwargs = CASES[name].make(seed, n)
    if case.sum_is_sum_of_none:
        none = value(build(name), args, reduction_override='none', **kwargs)
        total = value(build(name), args, reduction_override='sum', **kwargs)
        assert_close(total.sum(), none.sum(), rtol=1e-9, atol=1e-12,
                     what=f'{name}: sum vs none')
    if case.weight_shape is None:
        return
    ones = torch.ones(case.weight_shape(n), dtype=torch.float64)
    weighted = value(build(name), args, weight=ones, **kwargs)
    plain = value(build(name), args, **kwargs)
    assert_close(weighted, plain, rtol=1e-9, atol=1e-12,
                 what=f'{name}: weight of ones')
    averaged = value(build(name), args, avg_factor=n, **kwargs)
    assert_close(averaged, total.sum() / n, rtol=1e-6, atol=1e-12,
                 what=f'{name}: avg_factor')


def _cast_floats(args, dtype):
    return tuple(
        a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point()
        else tuple(_cast_floats(a, dtype)) if isinstance(a, tuple) else a
        for a in args)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('name', REGISTERED)
def test_half_precision_inputs_stay_finite(name, dtype):
    # Boxes a few hundred pixels wide overflow fp16 areas (65504) in mmdet.
    args, kwargs = CASES[name].make(7, 16)
    if CASES[name].box:
        args = (args[0] * 6, args[1] * 6) + args[2:]
    args = _cast_floats(args, dtype)
    pred = args[0].requires_grad_()
    loss = MODELS.build(dict(type=name, **CASES[name].cfg))
    out = value(loss, args, **kwargs)
    assert out.dtype in (dtype, torch.float32), out.dtype
    assert torch.isfinite(out).all(), out
    grad, = torch.autograd.grad(out.sum(), pred)
    assert grad.dtype == dtype
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize('name', REGISTERED)
def test_finite_under_autocast(name):
    args, kwargs = CASES[name].make(3, 16)
    args = _cast_floats(args, torch.float32)
    pred = args[0].requires_grad_()
    loss = MODELS.build(dict(type=name, **CASES[name].cfg))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = value(loss, args, **kwargs)
    assert torch.isfinite(out).all(), out
    grad, = torch.autograd.grad(out.float().sum(), pred)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize('name',
                         [n for n in REGISTERED
                          if CASES.get(n) and CASES[n].weight_shape])
@pytest.mark.parametrize('reduction,avg_factor', [
    ('mean', None), ('mean', 0), ('mean', 5.0), ('sum', None),
    ('none', 3.0)])
def test_empty_inputs_with_weights_give_a_connected_zero(
        name, reduction, avg_factor):
    args, kwargs = inputs(name, 0, 0)
    weight = torch.zeros(CASES[name].weight_shape(0), dtype=torch.float64)
    out = value(build(name), args, weight=weight, avg_factor=avg_factor,
                reduction_override=reduction, **kwargs)
    assert out.numel() == 0 or (out == 0).all()
    out.sum().backward()
    assert args[0].grad is not None and args[0].grad.shape == args[0].shape


@pytest.mark.parametrize('name',
                         [n for n in REGISTERED
                          if CASES.get(n) and CASES[n].weight_shape])
def test_all_zero_weights_give_a_connected_zero(name):
    args, kwargs = inputs(name, 1, 12)
    weight = torch.zeros(CASES[name].weight_shape(12), dtype=torch.float64)
    for avg_factor in (None, 0, 4.0):
        out = value(build(name), args, weight=weight, avg_factor=avg_factor,
                    **kwargs)
        assert out.item() == 0.0
        grad, = torch.autograd.grad(out, args[0])
        assert (grad == 0).all()


@pytest.mark.parametrize('name', REGISTERED)
def test_backward_through_a_retained_graph_repeats_the_gradient(name):
    """Fast paths reuse their saved gradient in place only when the graph is
    freed: with ``retain_graph`` every backward must see the same saved
    state, and the last (freeing) one must agree too."""
    stateless = build(name)
    args, kwargs = inputs(name, 3, 9)
    upstream = None
    grads = []
    out = value(stateless, args, reduction_override='none', **kwargs)
    upstream = torch.rand(out.shape, dtype=out.dtype,
                          generator=torch.Generator().manual_seed(4))
    for retain in (True, True, False):
        grad, = torch.autograd.grad((out * upstream).sum(), args[0],
                                    retain_graph=retain, allow_unused=True)
        grads.append(grad)
    if grads[0] is None:
        return
    for grad in grads[1:]:
        assert torch.equal(grad, grads[0]), name


def _strided_copy(tensor):
    """The same values in a non-contiguous layout (column-major for 2-D and
    up, every other element of a buffer for 1-D)."""
    if tensor.dim() >= 2:
        return tensor.detach().transpose(0, -1).contiguous().transpose(0, -1)
    return torch.stack([tensor.detach()] * 2, dim=1)[:, 0]


@pytest.mark.parametrize('name', REGISTERED)
@pytest.mark.parametrize('reduction', ['none', 'mean'])
def test_non_contiguous_inputs_give_the_same_result(name, reduction):
    """Heads hand over permuted or sliced tensors: a prediction and target
    stored non-contiguously give the contiguous result and gradient."""
    args, kwargs = inputs(name, 5, 12)
    results = []
    for layout in (lambda t: t.detach().clone(), _strided_copy):
        laid = tuple(layout(a) if isinstance(a, torch.Tensor) and
                     a.dtype.is_floating_point else a for a in args)
        laid[0].requires_grad_()
        if laid[0].dim() >= 2 and layout is _strided_copy:
            assert not laid[0].is_contiguous()
        out = value(build(name), laid, reduction_override=reduction,
                    **kwargs)
        grad, = torch.autograd.grad(out.sum(), laid[0], allow_unused=True)
        results.append((out.detach(), grad))
    (out, grad), (ref, ref_grad) = results[1], results[0]
    assert_close(out, ref, rtol=1e-10, atol=1e-12, what=f'{name} value')
    if ref_grad is not None:
        assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12,
                     what=f'{name} grad')
