"""GHM-C and GHM-R against MMDetection 3.3, by hand, and under stress."""
import math

import pytest
import torch

import mmloss
from mmloss.engine import dispatch
from mmloss.losses.ghm import (GHMC, GHMR, ghm_edges, ghmc_loss, ghmr_loss,
                               gradient_bin_index, harmonized_bin_weights)
from tests.helpers import assert_close
from tests.test_gradients import (MATMUL_FAMILY, OpRecorder,
                                  assert_same_derivatives, custom_functions,
                                  derivatives)

NUM_CLASSES = 8


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------
def cls_inputs(seed, n=600, num_classes=NUM_CLASSES, background=0.9,
               scale=3.0, ignored=0.1):
    """Logits (n, C), labels (n,) with ``C`` = background, label_weight."""
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, num_classes, generator=gen) * scale
    labels = torch.randint(0, num_classes, (n, ), generator=gen)
    labels[torch.rand(n, generator=gen) < background] = num_classes
    label_weight = (torch.rand(n, generator=gen) >= ignored).float()
    return pred, labels, label_weight


def onehot_of(labels, num_classes=NUM_CLASSES):
    return torch.nn.functional.one_hot(labels, num_classes + 1)[:, :-1] \
        .float()


def reg_inputs(seed, n=500, scale=0.1, ignored=0.2):
    """Deltas, targets and a (n, 4) label_weight."""
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, 4, generator=gen) * scale
    target = torch.randn(n, 4, generator=gen) * scale
    valid = (torch.rand(n, 1, generator=gen) >= ignored).float()
    return pred, target, valid.expand(-1, 4).contiguous()


def loss_and_grad(module, pred, *args, **kwargs):
    pred = pred.detach().clone().requires_grad_()
    loss = module(pred, *args, **kwargs)
    loss.sum().backward()
    return loss.detach(), pred.grad


def assert_same_step(ours, theirs, pred, *args, what='', **kwargs):
    """One forward + backward of both modules: same value and gradient.

    Element-wise results (the gradient, the 'none' loss) are compared with
    ``atol = 1e-6 * max|expected|``: a float32 sigmoid is exact only to an
    ulp of 1, so ``(sigmoid(x) - t) * w`` carries ~1e-7 * w of rounding in
    any float32 implementation (mmdet's own 'none' BCE, ``x -
    logsigmoid(x)``, loses ~1e-6 * w to cancellation). A wrong weight or
    bin is off by O(w) and still fails."""
    value, grad = loss_and_grad(ours, pred, *args, **kwargs)
    ref_value, ref_grad = loss_and_grad(theirs, pred, *args, **kwargs)
    assert torch.isfinite(ref_value).all(), what

    def scaled_atol(expected):
        return max(1e-6 * float(expected.abs().max()), 1e-12) \
            if expected.numel() else 1e-6

    assert_close(value, ref_value, atol=scaled_atol(ref_value),
                 what=f'{what} value')
    assert_close(grad, ref_grad, atol=scaled_atol(ref_grad),
                 what=f'{what} grad')
    return value, grad


# --------------------------------------------------------------------------
# Bins
# --------------------------------------------------------------------------
def brute_force_bins(g, edges):
    """MMDetection's comparisons, bin by bin."""
    bins = len(edges) - 1
    index = torch.full(g.shape, bins, dtype=torch.int32)
    for i in range(bins):
        index[(g >= edges[i]) & (g < edges[i + 1])] = i
    return index


@pytest.mark.parametrize('top', [1.0 + 1e-6, 1e3])
def test_bin_index_is_mmdet_bin_at_every_edge(top):
    # floor(g * bins) alone is off by one next to the edges for most bins
    # (e.g. 11, 12, 19, 20, ...): probe every edge and its neighbour ulps.
    for bins in list(range(1, 70)) + [97, 100, 128, 255, 256, 1000, 4096]:
        edges = ghm_edges(bins, top)
        down = torch.nextafter(edges, torch.tensor(-1.0))
        up = torch.nextafter(edges, torch.tensor(2e3))
        g = torch.cat([edges, down, up, torch.nextafter(down, up - 1),
                       torch.rand(200),
                       torch.tensor([0.0, 1.0, 1.0000001, 1 + 1e-6, 2.0,
                                     999.0, 1e3, 1e4])]).clamp_min(0)
        if top > 2:
            # GHM-R's g = |d| / sqrt(d^2 + mu^2) never exceeds 1 (+ an ulp)
            g = g[g <= 1.0000002]
        assert torch.equal(gradient_bin_index(g, bins, top),
                           brute_force_bins(g, edges)), bins


def test_bin_index_excludes_invalid_and_non_finite_norms():
    g = torch.tensor([0.05, 0.5, 0.95, float('nan'), float('inf'),
                      float('nan')])
    valid = torch.tensor([True, False, True, True, True, False])
    index = gradient_bin_index(g, 10, 1 + 1e-6, valid)
    # a non-finite norm is in no bin (it used to land in bin 0, where the
    # moving counts carried it into later steps)
    assert index.tolist() == [0, 10, 9, 10, 10, 10]
    assert gradient_bin_index(g, 10, 1e3).tolist() == [0, 5, 9, 10, 10, 10]


def test_bin_weights_by_hand():
    # bins 0, 0, 1, 3 of 4 -> counts (2, 1, 0, 1), n = 3, tot = 8
    index = torch.tensor([0, 0, 1, 3, 4], dtype=torch.int32)
    tot = torch.tensor(8.0)
    weight = harmonized_bin_weights(index, 4, tot)
    assert_close(weight, torch.tensor([8 / 2, 8 / 1, 0, 8 / 1, 0]) / 3)
    acc = torch.tensor([4.0, 0.0, 2.0, 0.0])
    weight = harmonized_bin_weights(index, 4, tot, 0.5, acc)
    # non-empty bins move: 0.5 * A + 0.5 * c; bin 2 (empty) keeps 2.0
    assert_close(acc, torch.tensor([3.0, 0.5, 2.0, 0.5]))
    assert_close(weight, torch.tensor([8 / 3, 8 / 0.5, 0, 8 / 0.5, 0]) / 3)


# --------------------------------------------------------------------------
# GHM-C
# --------------------------------------------------------------------------
def test_ghmc_by_hand():
    # two logits, bins=2: g = sigmoid(x) (negatives), one per bin -> w = 1
    pred = torch.tensor([[-2.0, 1.0]], requires_grad=True)
    target = torch.zeros(1, 2)
    loss = GHMC(bins=2)(pred, target, torch.ones(1, 2))
    # tot = 2, n = 2: w = tot / (n * 1) = 1; loss = sum(BCE) / 2
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(1.0))) / 2
    assert_close(loss, torch.tensor(expected))
    loss.backward()
    assert_close(pred.grad, torch.sigmoid(pred.detach()) / 2)


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('momentum', [0.0, 0.75])
@pytest.mark.parametrize('onehot', [False, True])
def test_ghmc_matches_mmdet(mmdet_losses, seed, momentum, onehot):
    pred, labels, label_weight = cls_inputs(seed)
    target = onehot_of(labels) if onehot else labels
    if onehot:
        label_weight = label_weight[:, None].expand(-1, NUM_CLASSES)
    for reduction in ('mean', 'none'):
        ours = GHMC(bins=30, momentum=momentum, loss_weight=2.0,
                    reduction=reduction)
        theirs = mmdet_losses.GHMC(bins=30, momentum=momentum,
                                   loss_weight=2.0, reduction=reduction)
        assert_same_step(ours, theirs, pred, target, label_weight,
                         what=f'{reduction}')
        # the override, and the avg_factor heads pass (ignored by both)
        override = 'none' if reduction == 'mean' else 'mean'
        assert_same_step(ours, theirs, pred, target, label_weight,
                         reduction_override=override, avg_factor=0.0,
                         what=f'{reduction} override')


@pytest.mark.parametrize('momentum', [0.0, 0.75])
def test_ghmc_momentum_matches_mmdet_over_iterations(mmdet_losses, momentum):
    ours = GHMC(bins=30, momentum=momentum)
    theirs = mmdet_losses.GHMC(bins=30, momentum=momentum)
    for step in range(4):
        # the batches differ in size and in their share of ignored anchors
        pred, labels, label_weight = cls_inputs(
            10 + step, n=400 + 150 * step, ignored=0.05 * step)
        assert_same_step(ours, theirs, pred, labels, label_weight,
                         what=f'step {step}')
        if momentum:
            # the same float32 operations in the same order: bit-identical
            assert torch.equal(ours.acc_sum, theirs.acc_sum), step


def test_ghmc_state_dict_restores_momentum(mmdet_losses):
    theirs = mmdet_losses.GHMC(bins=30, momentum=0.75)
    ours = GHMC(bins=30, momentum=0.75)
    assert set(ours.state_dict()) == set(theirs.state_dict()) \
        == {'edges', 'acc_sum'}
    for step in range(2):
        pred, labels, label_weight = cls_inputs(20 + step)
        theirs(pred, labels, label_weight)
        ours(pred, labels, label_weight)
    # an mmdet checkpoint loads strictly and resumes the same statistics
    resumed = GHMC(bins=30, momentum=0.75)
    resumed.load_state_dict(theirs.state_dict(), strict=True)
    assert torch.equal(resumed.acc_sum, theirs.acc_sum)
    # ... and so does our own, which differs from a fresh module
    restored = GHMC(bins=30, momentum=0.75)
    restored.load_state_dict(ours.state_dict())
    fresh = GHMC(bins=30, momentum=0.75)
    pred, labels, label_weight = cls_inputs(30)
    expected = theirs(pred, labels, label_weight)
    assert_close(resumed(pred, labels, label_weight), expected)
    assert_close(restored(pred, labels, label_weight), expected)
    assert not torch.allclose(fresh(pred, labels, label_weight), expected)
    # no momentum, no state: the same keys as mmdet
    assert set(GHMC(momentum=0).state_dict()) == {'edges'}


def test_ghmc_sum_is_sum_of_none(mmdet_losses):
    # mmdet raises for 'sum' (it always passes tot as avg_factor); ours sums
    pred, labels, label_weight = cls_inputs(3)
    with pytest.raises(ValueError):
        mmdet_losses.GHMC(bins=10, reduction='sum')(pred, labels,
                                                     label_weight)
    loss_sum, grad_sum = loss_and_grad(GHMC(bins=10, reduction='sum'), pred,
                                       labels, label_weight)
    loss_none, grad_none = loss_and_grad(GHMC(bins=10, reduction='none'),
                                         pred, labels, label_weight)
    assert_close(loss_sum, loss_none.sum())
    assert_close(grad_sum, grad_none)


@pytest.mark.parametrize('onehot', [False, True])
@pytest.mark.parametrize('reduction', ['none', 'mean', 'sum'])
def test_ghmc_fast_matches_plain(reduction, onehot):
    pred, labels, label_weight = cls_inputs(4)
    target = onehot_of(labels) if onehot else labels
    if onehot:
        label_weight = label_weight[:, None].expand(-1, NUM_CLASSES)
    results = []
    for fast in (True, False):
        acc = torch.zeros(30)
        x = pred.clone().requires_grad_()
        for _ in range(2):
            loss = ghmc_loss(x, target, label_weight, bins=30, momentum=0.75,
                             acc_sum=acc, reduction=reduction, fast=fast)
        loss.sum().backward()
        results.append((loss.detach(), x.grad, acc))
    for got, expected in zip(*results):
        assert_close(got, expected)


def test_ghmc_non_contiguous_inputs(mmdet_losses):
    # heads permute and reshape their logits; a transposed view must work
    pred, labels, label_weight = cls_inputs(13, n=300)
    transposed = pred.t().contiguous().t()
    assert not transposed.is_contiguous()
    for target, weight in ((labels, label_weight),
                           (onehot_of(labels).t().contiguous().t(),
                            label_weight[:, None].expand(-1, NUM_CLASSES))):
        assert_same_step(GHMC(bins=10, momentum=0.5),
                         mmdet_losses.GHMC(bins=10, momentum=0.5),
                         transposed, target, weight, what='transposed')


def test_ghmc_soft_target_with_grad_uses_plain_formula():
    pred, labels, label_weight = cls_inputs(5, n=50)
    target = (onehot_of(labels) * 0.8).requires_grad_()
    weight = label_weight[:, None].expand(-1, NUM_CLASSES)
    loss = ghmc_loss(pred, target, weight, bins=10)
    loss.backward()
    assert target.grad is not None and torch.isfinite(target.grad).all()


def test_ghmc_large_matches_mmdet(mmdet_losses):
    # RetinaNet's size: 100k anchors x 80 classes, 90 % background
    pred, labels, label_weight = cls_inputs(6, n=100_000, num_classes=80,
                                            scale=2.0)
    ours = GHMC(bins=30, momentum=0.75)
    theirs = mmdet_losses.GHMC(bins=30, momentum=0.75)
    assert_same_step(ours, theirs, pred, labels, label_weight, what='large')
    assert torch.equal(ours.acc_sum, theirs.acc_sum)


@pytest.mark.parametrize('fast', [True, False])
def test_ghmc_untrained_head_sum_matches_mmdet(mmdet_losses, fast):
    # Found by tests/test_zoo_parity.py (GHM RetinaNet, 4e-5 off): at
    # initialisation every logit sits near the prior log(0.01 / 0.99), so
    # all 368k weighted BCEs are nearly equal and a float32 dot product,
    # summing in order, drifts by ~4e-5; the sum must be a pairwise one.
    gen = torch.Generator().manual_seed(15)
    n, num_classes = 4608, 80
    pred = math.log(0.01 / 0.99) + 0.05 * torch.randn(n, num_classes,
                                                      generator=gen)
    labels = torch.full((n, ), num_classes)
    labels[:60] = torch.randint(0, num_classes, (60, ), generator=gen)
    label_weight = torch.ones(n)
    ours = GHMC(bins=30, momentum=0.75)
    theirs = mmdet_losses.GHMC(bins=30, momentum=0.75)
    expected = theirs(pred.double(), labels, label_weight.double())
    value = ghmc_loss(pred, labels, label_weight, bins=30, momentum=0.75,
                      acc_sum=ours.acc_sum, fast=fast)
    assert_close(value.double(), expected, rtol=1e-6, atol=0)
    assert_same_step(GHMC(bins=30, momentum=0.75), mmdet_losses.GHMC(
        bins=30, momentum=0.75), pred, labels, label_weight, what='prior')


@pytest.mark.parametrize('reduction', ['none', 'mean', 'sum'])
def test_ghmc_gradcheck(reduction):
    pred, labels, label_weight = cls_inputs(7, n=12, num_classes=3)
    pred = pred.double().requires_grad_()
    for target, weight in ((labels, label_weight),
                           (onehot_of(labels, 3).double(),
                            label_weight[:, None].expand(-1, 3))):
        assert torch.autograd.gradcheck(
            lambda x: ghmc_loss(x, target, weight, bins=5,
                                reduction=reduction), (pred, ))


# --------------------------------------------------------------------------
# GHM-C hardening
# --------------------------------------------------------------------------
@pytest.mark.parametrize('reduction', ['none', 'mean', 'sum'])
def test_ghmc_empty_input(reduction):
    module = GHMC(bins=10, momentum=0.75, reduction=reduction)
    pred = torch.zeros(0, NUM_CLASSES, requires_grad=True)
    loss = module(pred, torch.zeros(0, dtype=torch.long), torch.zeros(0))
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert pred.grad.shape == pred.shape
    assert torch.equal(module.acc_sum, torch.zeros(10))


def test_ghmc_all_ignored_is_zero_and_connected(mmdet_losses):
    # mmdet: tot = 1, every weight 0 -> 0 as well; the state does not move
    pred, labels, _ = cls_inputs(8, n=100)
    label_weight = torch.zeros(100)
    ours = GHMC(bins=10, momentum=0.75)
    value, grad = assert_same_step(
        ours, mmdet_losses.GHMC(bins=10, momentum=0.75), pred, labels,
        label_weight, what='all ignored')
    assert value == 0 and torch.equal(grad, torch.zeros_like(grad))
    assert torch.equal(ours.acc_sum, torch.zeros(10))


def test_ghmc_extreme_logits_match_mmdet(mmdet_losses):
    pred, labels, label_weight = cls_inputs(9, n=200)
    pred = torch.sign(pred) * 100
    value, grad = assert_same_step(GHMC(bins=10),
                                   mmdet_losses.GHMC(bins=10), pred, labels,
                                   label_weight, what='+-100')
    assert torch.isfinite(value) and torch.isfinite(grad).all()


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_ghmc_half_inputs(dtype):
    # mmdet fails on half logits (float targets); ours runs in float32
    pred, labels, label_weight = cls_inputs(10, n=300, scale=2.0)
    reference = GHMC(bins=10)(pred.to(dtype).float(), labels, label_weight)
    x = pred.to(dtype).requires_grad_()
    loss = GHMC(bins=10)(x, labels, label_weight)
    loss.backward()
    # a reduced loss of half inputs is float32 (as under autocast); the
    # element-wise one keeps the input dtype
    assert loss.dtype == torch.float32 and x.grad.dtype == dtype
    assert torch.isfinite(x.grad.float()).all()
    assert_close(loss, reference, rtol=1e-2, atol=1e-3)
    elementwise = GHMC(bins=10, reduction='none')(x, labels, label_weight)
    assert elementwise.dtype == dtype


def test_ghmc_nan_propagates():
    pred, labels, label_weight = cls_inputs(11, n=50)
    pred[3, 2] = float('nan')
    x = pred.requires_grad_()
    loss = GHMC(bins=10, momentum=0.5)(x, labels, label_weight)
    loss.backward()
    assert torch.isnan(loss) and torch.isnan(x.grad[3, 2])


@pytest.mark.parametrize('kwargs', [
    dict(bins=0), dict(bins=2.5), dict(bins=True), dict(momentum=1.0),
    dict(momentum=-0.1), dict(use_sigmoid=False), dict(loss_weight=-1.0)
])
def test_ghmc_bad_arguments(kwargs):
    with pytest.raises(ValueError, match='GHMC'):
        GHMC(**kwargs)


def test_ghm_unknown_reduction_builds_and_the_call_raises():
    # as in MMDetection, which checks the reduction only when called
    loss = GHMC(reduction='avg')
    with pytest.raises(ValueError, match='GHMC.*reduction'):
        loss(*cls_inputs(12, n=20))
    loss = GHMR(reduction='max')
    with pytest.raises(ValueError, match='GHMR.*reduction'):
        loss(*reg_inputs(11, n=10))


def test_ghm_sum_with_avg_factor_raises_like_mmdet():
    # mmdet raises for 'sum' (its own avg_factor); ours sums, but not with
    # an avg_factor, which 'sum' refuses in every mmloss loss
    with pytest.raises(ValueError, match='GHMC: avg_factor'):
        GHMC(reduction='sum')(*cls_inputs(12, n=20), avg_factor=4.0)
    with pytest.raises(ValueError, match='GHMR: avg_factor'):
        GHMR()(*reg_inputs(11, n=10), reduction_override='sum',
               avg_factor=4.0)


def test_ghmc_bad_inputs():
    pred, labels, label_weight = cls_inputs(12, n=20)
    module = GHMC()
    with pytest.raises(ValueError, match='GHMC'):
        module(pred, labels[:10], label_weight)
    with pytest.raises(ValueError, match='GHMC'):
        module(pred, labels, label_weight[:10])
    with pytest.raises(ValueError, match='GHMC'):
        module(pred, onehot_of(labels)[:, :3], label_weight)
    with pytest.raises(ValueError, match='GHMC'):
        module(pred, onehot_of(labels), label_weight)  # weight not (N, C)
    with pytest.raises(TypeError, match='GHMC'):
        module(pred, labels.float(), label_weight)
    with pytest.raises(ValueError, match='GHMC'):
        module(pred, labels + NUM_CLASSES + 1, label_weight)
    with pytest.raises(ValueError, match='GHMC'):
        module(pred, labels - 100, label_weight)
    with pytest.raises(ValueError, match='GHMC'):
        module(pred, labels, label_weight, reduction_override='avg')


def test_ghmc_builds_from_registry():
    from mmloss.registry import MODELS
    module = MODELS.build(dict(type='mmloss.GHMC', bins=30, momentum=0.75))
    assert isinstance(module, GHMC) and module.use_sigmoid
    assert module.acc_sum.shape == (30, )


# --------------------------------------------------------------------------
# GHM-R
# --------------------------------------------------------------------------
def test_ghmr_by_hand():
    # d = (0, 1), mu = 1, bins = 2: g = 0 and 1/sqrt(2) -> one per bin, w = 1
    pred = torch.tensor([[0.0, 1.0]], requires_grad=True)
    loss = GHMR(mu=1.0, bins=2)(pred, torch.zeros(1, 2), torch.ones(1, 2))
    # tot = 2: loss = (0 + sqrt(2) - 1) / 2
    assert_close(loss, torch.tensor((math.sqrt(2) - 1) / 2))
    loss.backward()
    assert_close(pred.grad, torch.tensor([[0.0, 1 / math.sqrt(2) / 2]]))


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('momentum', [0.0, 0.7])
def test_ghmr_matches_mmdet(mmdet_losses, seed, momentum):
    pred, target, label_weight = reg_inputs(seed)
    for reduction in ('mean', 'none'):
        ours = GHMR(mu=0.02, bins=10, momentum=momentum, loss_weight=3.0,
                    reduction=reduction)
        theirs = mmdet_losses.GHMR(mu=0.02, bins=10, momentum=momentum,
                                   loss_weight=3.0, reduction=reduction)
        assert_same_step(ours, theirs, pred, target, label_weight,
                         what=reduction)
        for avg_factor in (None, 0, 17.0):  # ignored by both
            assert_same_step(ours, theirs, pred, target, label_weight,
                             avg_factor=avg_factor,
                             reduction_override='none' if reduction == 'mean'
                             else 'mean', what=f'{reduction} override')


def test_ghmr_fractional_label_weight_matches_mmdet(mmdet_losses):
    # tot is sum(label_weight), not the count of valid elements
    pred, target, _ = reg_inputs(3)
    label_weight = torch.rand(pred.shape, generator=torch.Generator()
                              .manual_seed(3))
    label_weight[label_weight < 0.3] = 0
    assert_same_step(GHMR(bins=7), mmdet_losses.GHMR(bins=7), pred, target,
                     label_weight, what='fractional')


def test_ghmr_momentum_matches_mmdet_over_iterations(mmdet_losses):
    ours = GHMR(mu=0.02, bins=10, momentum=0.7)
    theirs = mmdet_losses.GHMR(mu=0.02, bins=10, momentum=0.7)
    for step in range(4):
        pred, target, label_weight = reg_inputs(
            10 + step, n=300 + 100 * step, scale=0.05 * (step + 1))
        assert_same_step(ours, theirs, pred, target, label_weight,
                         what=f'step {step}')
        assert torch.equal(ours.acc_sum, theirs.acc_sum), step


def test_ghmr_state_dict_restores_momentum(mmdet_losses):
    theirs = mmdet_losses.GHMR(momentum=0.7)
    assert set(GHMR(momentum=0.7).state_dict()) == set(theirs.state_dict())
    for step in range(2):
        theirs(*reg_inputs(20 + step))
    resumed = GHMR(momentum=0.7)
    resumed.load_state_dict(theirs.state_dict(), strict=True)
    inputs = reg_inputs(30)
    assert_close(resumed(*inputs), theirs(*inputs))
    assert torch.equal(resumed.acc_sum, theirs.acc_sum)


def test_ghmr_sum_is_sum_of_none(mmdet_losses):
    inputs = reg_inputs(4)
    with pytest.raises(ValueError):
        mmdet_losses.GHMR(reduction='sum')(*inputs)
    loss_sum, grad_sum = loss_and_grad(GHMR(reduction='sum'), *inputs)
    loss_none, grad_none = loss_and_grad(GHMR(reduction='none'), *inputs)
    assert_close(loss_sum, loss_none.sum())
    assert_close(grad_sum, grad_none)


@pytest.mark.parametrize('reduction', ['none', 'mean', 'sum'])
def test_ghmr_fast_matches_plain(reduction):
    pred, target, label_weight = reg_inputs(5)
    results = []
    for fast in (True, False):
        acc = torch.zeros(10)
        x = pred.clone().requires_grad_()
        t = target.clone().requires_grad_()
        for _ in range(2):
            loss = ghmr_loss(x, t, label_weight, momentum=0.7, acc_sum=acc,
                             reduction=reduction, fast=fast)
        loss.sum().backward()
        results.append((loss.detach(), x.grad, t.grad, acc))
    for got, expected in zip(*results):
        assert_close(got, expected)


def test_ghmr_non_contiguous_inputs(mmdet_losses):
    pred, target, label_weight = reg_inputs(12, n=100)
    pred, target = pred.t().contiguous().t(), target.t().contiguous().t()
    assert_same_step(GHMR(momentum=0.5), mmdet_losses.GHMR(momentum=0.5),
                     pred, target, label_weight, what='transposed')


def test_ghmr_large_matches_mmdet(mmdet_losses):
    pred, target, label_weight = reg_inputs(6, n=200_000, scale=0.5)
    ours = GHMR(mu=0.02, bins=10, momentum=0.7)
    theirs = mmdet_losses.GHMR(mu=0.02, bins=10, momentum=0.7)
    assert_same_step(ours, theirs, pred, target, label_weight, what='large')
    assert torch.equal(ours.acc_sum, theirs.acc_sum)


@pytest.mark.parametrize('reduction', ['none', 'mean', 'sum'])
def test_ghmr_gradcheck(reduction):
    pred, target, label_weight = reg_inputs(7, n=6)
    pred = pred.double().requires_grad_()
    target = target.double().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, t: ghmr_loss(x, t, label_weight, mu=0.05, bins=4,
                               reduction=reduction), (pred, target))


@pytest.mark.parametrize('reduction', ['none', 'mean', 'sum'])
def test_ghmr_empty_input(reduction):
    pred = torch.zeros(0, 4, requires_grad=True)
    loss = GHMR(momentum=0.7, reduction=reduction)(pred, torch.zeros(0, 4),
                                                   torch.zeros(0, 4))
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert pred.grad.shape == pred.shape


def test_ghmr_all_ignored_is_zero_and_connected(mmdet_losses):
    pred, target, _ = reg_inputs(8, n=50)
    value, grad = assert_same_step(GHMR(), mmdet_losses.GHMR(), pred, target,
                                   torch.zeros(50, 4), what='all ignored')
    assert value == 0 and torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_ghmr_half_inputs(dtype):
    pred, target, label_weight = reg_inputs(9, scale=30.0)
    x = pred.to(dtype).requires_grad_()
    loss = GHMR()(x, target.to(dtype), label_weight.to(dtype))
    loss.backward()
    reference = GHMR()(pred.to(dtype).float(), target.to(dtype).float(),
                       label_weight)
    assert loss.dtype == torch.float32 and x.grad.dtype == dtype
    assert torch.isfinite(loss) and torch.isfinite(x.grad.float()).all()
    assert_close(loss, reference, rtol=1e-2, atol=1e-3)
    elementwise = GHMR(reduction='none')(x, target.to(dtype), label_weight)
    assert elementwise.dtype == dtype


def test_ghmr_nan_propagates():
    pred, target, label_weight = reg_inputs(10, n=20)
    pred[0, 0] = float('nan')
    x = pred.requires_grad_()
    loss = GHMR()(x, target, torch.ones(20, 4))
    loss.backward()
    assert torch.isnan(loss) and torch.isnan(x.grad[0, 0])


@pytest.mark.parametrize('kwargs', [
    dict(mu=0), dict(mu=-0.1), dict(bins=0), dict(momentum=1.0),
    dict(momentum=-0.5), dict(loss_weight=-2.0)
])
def test_ghmr_bad_arguments(kwargs):
    with pytest.raises(ValueError, match='GHMR'):
        GHMR(**kwargs)


def test_ghmr_bad_inputs():
    pred, target, label_weight = reg_inputs(11, n=10)
    with pytest.raises(ValueError, match='GHMR'):
        GHMR()(pred, target[:, :3], label_weight)
    with pytest.raises(ValueError, match='GHMR'):
        GHMR()(pred, target, label_weight[:, :1])
    with pytest.raises(TypeError, match='GHMR'):
        GHMR()(pred.long(), target, label_weight)


# --------------------------------------------------------------------------
# The engine: double backward, dispatch, autocast, no matrix products
# --------------------------------------------------------------------------
def _ghmc_inputs(onehot, n=40, num_classes=4, dtype=torch.float64):
    pred, labels, label_weight = cls_inputs(31, n=n, num_classes=num_classes)
    if onehot:
        return (pred.to(dtype), onehot_of(labels, num_classes).to(dtype),
                label_weight[:, None].expand(-1, num_classes).to(dtype))
    return pred.to(dtype), labels, label_weight.to(dtype)


def _ghmc_call(target, label_weight, reduction, fast, momentum=0.75,
               bins=5):
    # a fresh running state for every evaluation of the loss
    acc = torch.zeros(bins, dtype=torch.float64)

    def call(pred):
        acc.zero_()
        return ghmc_loss(pred, target, label_weight, bins=bins,
                         momentum=momentum, acc_sum=acc if momentum else None,
                         reduction=reduction, fast=fast)
    return call


def _ghmr_call(label_weight, reduction, fast, momentum=0.7, bins=4):
    acc = torch.zeros(bins, dtype=torch.float64)

    def call(pred, target):
        acc.zero_()
        return ghmr_loss(pred, target, label_weight, mu=0.05, bins=bins,
                         momentum=momentum, acc_sum=acc if momentum else None,
                         reduction=reduction, fast=fast)
    return call


@pytest.mark.parametrize('onehot', [False, True])
@pytest.mark.parametrize('reduction', ['none', 'mean', 'sum'])
def test_ghmc_double_backward_equals_the_plain_formula(onehot, reduction):
    pred, target, label_weight = _ghmc_inputs(onehot)
    fast = derivatives(_ghmc_call(target, label_weight, reduction, True),
                       (pred, ))
    plain = derivatives(_ghmc_call(target, label_weight, reduction, False),
                        (pred, ))
    assert_same_derivatives(fast, plain, what=f'GHMC {reduction}')


@pytest.mark.parametrize('reduction', ['none', 'mean', 'sum'])
def test_ghmr_double_backward_equals_the_plain_formula(reduction):
    pred, target, label_weight = (t.double() for t in reg_inputs(32, n=30))
    fast = derivatives(_ghmr_call(label_weight, reduction, True),
                       (pred, target))
    plain = derivatives(_ghmr_call(label_weight, reduction, False),
                        (pred, target))
    assert_same_derivatives(fast, plain, what=f'GHMR {reduction}')


def test_double_backward_moves_the_running_state_once():
    pred, labels, label_weight = cls_inputs(33, n=50)
    acc = torch.zeros(10)
    x = pred.clone().requires_grad_()
    loss = ghmc_loss(x, labels, label_weight, momentum=0.5, acc_sum=acc,
                     fast=True)
    after_forward = acc.clone()
    grad, = torch.autograd.grad(loss, x, create_graph=True)
    (grad * grad).sum().backward()
    assert torch.equal(acc, after_forward)
    assert after_forward.abs().sum() > 0


@pytest.mark.parametrize('onehot', [False, True])
@pytest.mark.parametrize('reduction', ['none', 'mean', 'sum'])
def test_ghmc_gradgradcheck(onehot, reduction):
    # the weights are constants of the derivatives (momentum 0: they depend
    # on the bins of this input only, and no element sits on a bin edge)
    pred, target, label_weight = _ghmc_inputs(onehot, n=6, num_classes=3)
    assert torch.autograd.gradgradcheck(
        _ghmc_call(target, label_weight, reduction, True, momentum=0),
        (pred.requires_grad_(), ))


@pytest.mark.parametrize('reduction', ['none', 'mean', 'sum'])
def test_ghmr_gradgradcheck(reduction):
    pred, target, label_weight = (t.double() for t in reg_inputs(34, n=5))
    assert torch.autograd.gradgradcheck(
        _ghmr_call(label_weight, reduction, True, momentum=0),
        (pred.requires_grad_(), target.requires_grad_()))


@pytest.mark.parametrize('loss', ['GHMC', 'GHMR'])
def test_the_dispatcher_decides_the_path(loss):
    if loss == 'GHMC':
        pred, *rest = cls_inputs(35, n=64)
        module = GHMC(bins=10, momentum=0.5)
    else:
        pred, *rest = reg_inputs(35, n=64)
        module = GHMR(momentum=0.5)

    def functions():
        return custom_functions(module(pred.clone().requires_grad_(), *rest))

    threshold = dispatch.TUNING['cpu'].min_rows.get(loss, 0)
    assert threshold <= 64
    assert 'GradientInForwardBackward' in functions()
    with dispatch.pretend_device('cuda'):
        assert 'GradientInForwardBackward' in functions()
    with mmloss.fast_paths(False):
        assert not functions()


@pytest.mark.parametrize('onehot', [False, True])
@pytest.mark.parametrize('n', [16, 5000])
def test_ghmc_autocast_equals_float32(onehot, n):
    pred, target, label_weight = _ghmc_inputs(onehot, n=n, num_classes=8,
                                              dtype=torch.float32)

    def step(autocast):
        x = pred.clone().requires_grad_()
        acc = torch.zeros(10)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            loss = ghmc_loss(x, target, label_weight, momentum=0.5,
                             acc_sum=acc)
        loss.backward()
        return loss.detach(), x.grad, acc

    for got, expected in zip(step(True), step(False)):
        assert got.dtype == torch.float32
        assert_close(got, expected, rtol=1e-4, atol=0)


@pytest.mark.parametrize('n', [16, 5000])
def test_ghmr_autocast_equals_float32(n):
    pred, target, label_weight = reg_inputs(36, n=n)

    def step(autocast):
        x = pred.clone().requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            loss = GHMR(momentum=0.5)(x, target, label_weight)
        loss.backward()
        return loss.detach(), x.grad

    for got, expected in zip(step(True), step(False)):
        assert got.dtype == torch.float32
        assert_close(got, expected, rtol=1e-4, atol=0)


def test_no_matrix_product_touches_pred_or_grad():
    pred, labels, label_weight = cls_inputs(37, n=40)
    rpred, rtarget, rweight = reg_inputs(37, n=40)
    for fast in (True, False):
        for reduction in ('none', 'mean', 'sum'):
            with OpRecorder() as recorder:
                x = pred.clone().requires_grad_()
                ghmc_loss(x, labels, label_weight, reduction=reduction,
                          fast=fast).sum().backward()
                x = rpred.clone().requires_grad_()
                ghmr_loss(x, rtarget, rweight, reduction=reduction,
                          fast=fast).sum().backward()
            assert not recorder.ops & MATMUL_FAMILY, recorder.ops


def test_label_check_is_queued_off_the_cpu():
    # on an accelerator the label range check must not read the labels on
    # the host: it is queued (torch._assert_async), and fails as a
    # RuntimeError at the next synchronisation (at once on CPU tensors)
    pred, labels, label_weight = cls_inputs(38, n=20)
    with dispatch.pretend_device('cuda'):
        GHMC()(pred, labels, label_weight)
        with pytest.raises(RuntimeError, match='GHMC: target out of range'):
            GHMC()(pred, labels + NUM_CLASSES + 1, label_weight)


def test_function_argument_errors_name_the_loss():
    pred, labels, label_weight = cls_inputs(39, n=10)
    with pytest.raises(ValueError, match='GHMC: momentum > 0 needs acc_sum'):
        ghmc_loss(pred, labels, label_weight, momentum=0.5)
    with pytest.raises(ValueError, match=r'GHMC: acc_sum must have shape '
                       r'\(10,\), but has shape \(3,\)'):
        ghmc_loss(pred, labels, label_weight, momentum=0.5,
                  acc_sum=torch.zeros(3))
    with pytest.raises(ValueError, match='GHMC: bins'):
        ghmc_loss(pred, labels, label_weight, bins=0)
    with pytest.raises(ValueError, match='GHMC: reduction'):
        ghmc_loss(pred, labels, label_weight, reduction='avg')
    rpred, rtarget, rweight = reg_inputs(39, n=10)
    with pytest.raises(ValueError, match='GHMR: mu'):
        ghmr_loss(rpred, rtarget, rweight, mu=0.0)
    with pytest.raises(ValueError, match=r'GHMR: pred has shape \(10, 4\) '
                       r'but label_weight has shape \(10, 1\)'):
        ghmr_loss(rpred, rtarget, rweight[:, :1])


def test_bin_helpers_check_their_inputs():
    with pytest.raises(TypeError, match='gradient_bin_index: g must be a '
                       'floating point tensor'):
        gradient_bin_index(torch.zeros(3, dtype=torch.long), 10, 1.0)
    with pytest.raises(TypeError, match='gradient_bin_index: valid must be '
                       'a bool tensor'):
        gradient_bin_index(torch.zeros(3), 10, 1.0, torch.ones(3))
    with pytest.raises(ValueError, match=r'gradient_bin_index: valid has '
                       r'shape \(2,\)'):
        gradient_bin_index(torch.zeros(3), 10, 1.0, torch.ones(2, dtype=bool))
    with pytest.raises(ValueError, match='gradient_bin_index: bins'):
        gradient_bin_index(torch.zeros(3), 0, 1.0)
    index = torch.zeros(3, dtype=torch.int32)
    with pytest.raises(TypeError, match='harmonized_bin_weights: index must '
                       'hold integer'):
        harmonized_bin_weights(index.float(), 4, torch.tensor(1.0))
    with pytest.raises(ValueError, match='harmonized_bin_weights: momentum '
                       '> 0 needs acc_sum'):
        harmonized_bin_weights(index, 4, torch.tensor(1.0), 0.5)


# --------------------------------------------------------------------------
# Running state: non-finite batches, half-precision modules and results
# --------------------------------------------------------------------------
def _poisoned(pred, value, rows=slice(0, 3)):
    bad = pred.clone()
    bad[rows, 1] = value
    return bad


@pytest.mark.parametrize('fast', [True, False])
@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_ghmc_non_finite_batch_leaves_the_state_alone(mmdet_losses, fast,
                                                      bad):
    # mmdet counts NaN/Inf elements in bin 0 (Inf logits have a finite
    # g) and the moving counts carry them into every later step; ours
    # returns a non-finite loss for that batch and moves no state
    ours = GHMC(bins=10, momentum=0.75)
    clean = GHMC(bins=10, momentum=0.75)
    theirs = mmdet_losses.GHMC(bins=10, momentum=0.75)
    for step in range(3):
        pred, labels, label_weight = cls_inputs(40 + step, n=200)
        if step == 1:
            before = ours.acc_sum.clone()
            # a +inf logit in the label's column has BCE 0 and g 0: it
            # must still not be counted, nor give a finite loss
            worst = _poisoned(pred, bad)
            labels[:3] = 1
            label_weight[:3] = 1
            loss = ghmc_loss(worst, labels, label_weight, 10, 0.75,
                             ours.acc_sum, fast=fast)
            assert not torch.isfinite(loss)
            assert torch.equal(ours.acc_sum, before)
            continue
        expected = theirs(pred, labels, label_weight)
        clean(pred, labels, label_weight)
        assert_close(ghmc_loss(pred, labels, label_weight, 10, 0.75,
                               ours.acc_sum, fast=fast), expected)
        assert torch.equal(ours.acc_sum, clean.acc_sum)
        assert torch.equal(ours.acc_sum, theirs.acc_sum)


@pytest.mark.parametrize('fast', [True, False])
def test_ghmc_soft_target_nan_leaves_the_state_alone(fast):
    pred, labels, label_weight = cls_inputs(45, n=50)
    target = onehot_of(labels)
    weight = label_weight[:, None].expand_as(pred).contiguous()
    acc_sum = torch.zeros(10)
    ghmc_loss(pred, target, weight, 10, 0.5, acc_sum, fast=fast)
    before = acc_sum.clone()
    target[0, 0] = float('nan')
    assert torch.isnan(ghmc_loss(pred, target, weight, 10, 0.5, acc_sum,
                                 fast=fast))
    assert torch.equal(acc_sum, before)


@pytest.mark.parametrize('fast', [True, False])
@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_ghmr_non_finite_batch_leaves_the_state_alone(mmdet_losses, fast,
                                                      bad):
    ours = GHMR(momentum=0.7)
    theirs = mmdet_losses.GHMR(momentum=0.7)
    for step in range(3):
        pred, target, label_weight = reg_inputs(50 + step, n=200)
        if step == 1:
            before = ours.acc_sum.clone()
            for worst in (_poisoned(pred, bad), pred.fill_(bad)):
                loss = ghmr_loss(worst, target, label_weight, 0.02, 10, 0.7,
                                 ours.acc_sum, fast=fast)
                assert not torch.isfinite(loss)
                assert torch.equal(ours.acc_sum, before)
            continue
        expected = theirs(pred, target, label_weight)
        assert_close(ghmr_loss(pred, target, label_weight, 0.02, 10, 0.7,
                               ours.acc_sum, fast=fast), expected)
        assert torch.equal(ours.acc_sum, theirs.acc_sum)


def test_non_finite_element_is_never_masked():
    # NaN/Inf in a valid element makes the element-wise loss non-finite
    # there (momentum or not, any path), and nowhere else
    pred, labels, label_weight = cls_inputs(46, n=30)
    label_weight[:] = 1
    labels[0] = 2
    for value in (float('nan'), float('inf'), -float('inf')):
        bad = pred.clone()
        bad[0, 2] = value
        for fast in (True, False):
            loss = ghmc_loss(bad, labels, label_weight, reduction='none',
                             fast=fast)
            finite = torch.isfinite(loss)
            assert not finite[0, 2] and finite.sum() == loss.numel() - 1
    pred, target, label_weight = reg_inputs(47, n=30)
    pred[4, 1] = float('inf')
    loss = ghmr_loss(pred, target, torch.ones_like(pred), reduction='none')
    finite = torch.isfinite(loss)
    assert not finite[4, 1] and finite.sum() == loss.numel() - 1


@pytest.mark.parametrize('cls', [GHMC, GHMR])
def test_state_stays_float32_in_a_half_module(cls):
    module = cls(momentum=0.5).half()
    assert module.acc_sum.dtype == module.edges.dtype == torch.float32
    # the edges are MMDetection's float32 values, not their float16 cast
    assert torch.equal(module.edges, cls(momentum=0.5).edges)
    module.to(torch.float64)
    assert module.acc_sum.dtype == module.edges.dtype == torch.float32
    # a float16 (or float64) checkpoint loads into float32 state, with
    # assign=True too
    state = {k: v.half() for k, v in cls(momentum=0.5).state_dict().items()}
    state['acc_sum'] = torch.full_like(state['acc_sum'], 3.0)
    for assign in (False, True):
        module.load_state_dict(state, assign=assign)
        assert module.acc_sum.dtype == torch.float32
        assert torch.equal(module.acc_sum, torch.full((10, ), 3.0))


def test_half_module_counts_past_float16_range(mmdet_losses):
    # ~320k elements, most in bin 0: (1 - m) * count is far above 65504
    gen = torch.Generator().manual_seed(48)
    pred = (torch.randn(20000, 16, generator=gen) * 4 - 8).half()
    labels = torch.full((20000, ), 16)
    label_weight = torch.ones(20000)
    module = GHMC(momentum=0.75).half()
    theirs = mmdet_losses.GHMC(momentum=0.75)
    for _ in range(2):
        loss = module(pred, labels, label_weight)
        expected = theirs(pred.float(), labels, label_weight)
        assert loss.dtype == torch.float32
        # rtol 1e-4: the kernel's float32 dot over 320k weighted terms
        # (weights up to ~1e3) rounds more than mmdet's pairwise sum
        assert_close(loss, expected, rtol=1e-4)
        assert module.acc_sum.max() > 65504
        assert torch.equal(module.acc_sum, theirs.acc_sum)


@pytest.mark.parametrize('fast', [True, False])
def test_reduced_half_loss_is_float32_not_inf(mmdet_losses, fast):
    # momentum 0.999 weighs the first step ~1000x: the mean of these half
    # logits is ~1.1e5, past float16's 65504 (it used to come back inf)
    gen = torch.Generator().manual_seed(0)
    pred = (torch.randn(64, 8, generator=gen) * 400).half()
    labels = torch.randint(0, 8, (64, ), generator=gen)
    label_weight = torch.ones(64)
    expected = mmdet_losses.GHMC(momentum=0.999)(pred.float(), labels,
                                                 label_weight)
    assert expected > 65504
    loss = ghmc_loss(pred, labels, label_weight, 10, 0.999, torch.zeros(10),
                     fast=fast)
    assert loss.dtype == torch.float32
    assert_close(loss, expected)
    total = ghmc_loss(pred, labels, label_weight, 10, 0.999,
                      torch.zeros(10), reduction='sum', fast=fast)
    assert total.dtype == torch.float32 and torch.isfinite(total)
    none = ghmc_loss(pred, labels, label_weight, 10, 0.999, torch.zeros(10),
                     reduction='none', fast=fast)
    assert none.dtype == torch.float16
    # GHM-R: a sum of half losses past 65504
    pred = torch.full((300, 4), 300.0, dtype=torch.float16)
    target = torch.zeros_like(pred)
    total = ghmr_loss(pred, target, torch.ones_like(pred), reduction='sum',
                      fast=fast)
    assert total.dtype == torch.float32
    assert_close(total, torch.tensor(1200 * (math.sqrt(300.0 ** 2 + 0.02 **
                                                       2) - 0.02)))


@pytest.mark.parametrize('dtype', [torch.int32, torch.int16, torch.int8,
                                   torch.uint8])
def test_ghmc_any_integer_label_dtype(dtype):
    pred, labels, label_weight = cls_inputs(49, n=40)
    expected = GHMC()(pred, labels, label_weight)
    assert_close(GHMC()(pred, labels.to(dtype), label_weight), expected)
    # uint8 labels against more than 256 classes: 250 < 300 must not wrap
    wide = torch.randn(6, 300)
    labels = torch.tensor([5, 250, 300, 0, 255, 300])
    for fast in (True, False):
        assert_close(ghmc_loss(wide, labels.clamp(max=255).to(torch.uint8),
                               torch.ones(6), fast=fast),
                     ghmc_loss(wide, labels.clamp(max=255), torch.ones(6),
                               fast=fast))
    with pytest.raises(ValueError, match='GHMC: target holds -1'):
        GHMC()(pred, torch.full((40, ), -1, dtype=torch.int8), label_weight)


def test_integer_acc_sum_is_refused():
    # an int64 buffer would truncate the moving averages silently
    pred, labels, label_weight = cls_inputs(63, n=10)
    with pytest.raises(TypeError, match='GHMC: acc_sum must be a floating'):
        ghmc_loss(pred, labels, label_weight, 10, 0.5,
                  torch.zeros(10, dtype=torch.long))
    pred, target, label_weight = reg_inputs(63, n=10)
    with pytest.raises(TypeError, match='GHMR: acc_sum must be a floating'):
        ghmr_loss(pred, target, label_weight, 0.02, 10, 0.5,
                  torch.zeros(10, dtype=torch.long))
