"""GaussianFocalLoss: mmdet 3.3 parity (both forms), hand values, gradcheck,
hardening."""
import itertools
import math

import pytest
import torch

import mmloss
from mmloss import MODELS
from mmloss.losses.gaussian_focal import (GaussianFocalLoss,
                                          gaussian_focal_loss,
                                          gaussian_focal_loss_with_pos_inds)
from tests.helpers import assert_close
from tests.test_focal import (assert_second_order, graph_functions,
                              value_grad_hvp)

REDUCTIONS = ('none', 'mean', 'sum')


def heatmap(shape, seed, peaks=0.05):
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(shape, generator=g) * 0.98 + 0.01
    target = torch.rand(shape, generator=g)**4
    target[torch.rand(shape, generator=g) < peaks] = 1.0
    return pred, target


def positives(n, c, m, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, n, (m, ), generator=g),
            torch.randint(0, c, (m, ), generator=g))


def run(module, pred, target, **kwargs):
    x = pred.clone().requires_grad_()
    loss = module(x, target, **kwargs)
    loss.sum().backward()
    return loss.detach(), x.grad


def grad_close(grad, ref, what=''):
    # avg_factor=0 scales everything by 1 / eps ~ 8e6
    scale = ref.abs().max().clamp(min=1.0)
    assert_close(grad / scale, ref / scale, what=what)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_heatmap_form_matches_mmdet(mmdet_losses, seed):
    pred, target = heatmap((2, 3, 8, 8), seed)
    kwargs = dict(alpha=2.0, gamma=4.0, pos_weight=0.7, neg_weight=1.3,
                  loss_weight=0.5)
    ours, theirs = GaussianFocalLoss(**kwargs), mmdet_losses.GaussianFocalLoss(
        **kwargs)
    g = torch.Generator().manual_seed(seed)
    for weight, reduction, avg_factor in itertools.product(
            (None, torch.rand(2, 3, 8, 8, generator=g)), REDUCTIONS,
            (None, 0, 9.0)):
        if reduction == 'sum' and avg_factor is not None:
            continue
        kw = dict(weight=weight, avg_factor=avg_factor,
                  reduction_override=reduction)
        value, grad = run(ours, pred, target, **kw)
        ref, ref_grad = run(theirs, pred, target, **kw)
        what = f'{reduction} avg_factor={avg_factor}'
        assert_close(value, ref, what=what)
        grad_close(grad, ref_grad, what=what + ' grad')


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_pos_inds_form_matches_mmdet(mmdet_losses, seed):
    pred, target = heatmap((60, 5), seed, peaks=0.0)
    pos_inds, pos_labels = positives(60, 5, 9, seed)
    ours = GaussianFocalLoss(alpha=1.5, gamma=3.0, pos_weight=0.25)
    theirs = mmdet_losses.GaussianFocalLoss(alpha=1.5, gamma=3.0,
                                            pos_weight=0.25)
    for reduction, avg_factor in itertools.product(('mean', 'sum'),
                                                   (None, 0, 4.0)):
        if reduction == 'sum' and avg_factor is not None:
            continue
        kw = dict(pos_inds=pos_inds, pos_labels=pos_labels,
                  avg_factor=avg_factor, reduction_override=reduction)
        value, grad = run(ours, pred, target, **kw)
        ref, ref_grad = run(theirs, pred, target, **kw)
        assert_close(value, ref, what=reduction)
        grad_close(grad, ref_grad, what=reduction + ' grad')


def test_large_heatmap_matches_mmdet(mmdet_losses):
    pred, target = heatmap((8, 80, 128, 128), 3, peaks=1e-3)
    value, grad = run(GaussianFocalLoss(), pred, target, avg_factor=100.0)
    ref, ref_grad = run(mmdet_losses.GaussianFocalLoss(), pred, target,
                        avg_factor=100.0)
    assert_close(value, ref)
    grad_close(grad, ref_grad)


@pytest.mark.parametrize('alpha,gamma', [(2.0, 4.0), (1.5, 3.0), (1.0, 0.0)])
def test_fast_path_matches_autograd(alpha, gamma):
    """The analytic gradient against autograd (a weight that needs a
    gradient takes the autograd path)."""
    pred, target = heatmap((5, 6, 7), 1, peaks=0.1)
    pred, target = pred.double(), target.double()
    weight = torch.rand(5, 6, 7, dtype=torch.float64)
    kwargs = dict(alpha=alpha, gamma=gamma, pos_weight=0.6, neg_weight=1.7,
                  reduction='none')
    x = pred.clone().requires_grad_()
    fast = gaussian_focal_loss(x, target, weight, **kwargs)
    fast.sum().backward()
    y = pred.clone().requires_grad_()
    plain = gaussian_focal_loss(y, target, weight.clone().requires_grad_(),
                                **kwargs)
    plain.sum().backward()
    assert_close(fast, plain.detach(), rtol=1e-10, atol=1e-12)
    assert_close(x.grad, y.grad, rtol=1e-10, atol=1e-12)


def test_hand_values():
    # positive p = 0.5: -log 0.5 * 0.5**2; negative p = 0.5, y = 0.5:
    # -log 0.5 * 0.5**2 * 0.5**4
    pred = torch.tensor([0.5, 0.5])
    target = torch.tensor([1.0, 0.5])
    loss = gaussian_focal_loss(pred, target, reduction='none')
    log2 = math.log(2)
    assert_close(loss, torch.tensor([0.25 * log2, 0.25 * log2 / 16]))
    # index form: positive at (0, 1) of p = 0.5, no negatives (target 1)
    loss = gaussian_focal_loss_with_pos_inds(
        torch.tensor([[0.0, 0.5]]), torch.ones(1, 2), torch.tensor([0]),
        torch.tensor([1]), reduction='sum')
    assert_close(loss, torch.tensor(0.25 * log2))


def test_gradcheck():
    pred, target = heatmap((4, 5), 0, peaks=0.2)
    x = pred.double().requires_grad_()
    loss = GaussianFocalLoss(alpha=1.5, gamma=3.0)
    assert torch.autograd.gradcheck(lambda x: loss(x, target.double()),
                                    (x, ))
    pos_inds, pos_labels = positives(4, 5, 3, 0)
    assert torch.autograd.gradcheck(
        lambda x: loss(x, target.double(), pos_inds, pos_labels), (x, ))


@pytest.mark.parametrize('reduction', REDUCTIONS)
def test_empty_inputs(reduction, mmdet_losses):
    """Empty heatmap: a finite zero with a working backward."""
    x = torch.zeros(0, 4, requires_grad=True)
    loss = GaussianFocalLoss()(x, torch.zeros(0, 4),
                               reduction_override=reduction)
    assert torch.isfinite(loss).all() and loss.sum().item() == 0
    loss.sum().backward()
    assert x.grad.shape == (0, 4)


def test_no_positives_in_index_form(mmdet_losses):
    """No positives with 'mean': mmdet's positive part is mean([]) = NaN;
    ours is 0, so the loss is the negative part alone."""
    pred, target = heatmap((10, 3), 0, peaks=0.0)
    empty = torch.zeros(0, dtype=torch.long)
    ref = mmdet_losses.GaussianFocalLoss()(pred, target, empty, empty)
    assert torch.isnan(ref)
    x = pred.clone().requires_grad_()
    loss = GaussianFocalLoss()(x, target, empty, empty)
    loss.backward()
    neg = -torch.log(1 - pred + 1e-12) * pred**2 * (1 - target)**4
    assert_close(loss, neg.mean())
    assert torch.isfinite(x.grad).all()


def test_zero_weights_and_extreme_predictions():
    pred, target = heatmap((6, 7), 0)
    x = pred.clone().requires_grad_()
    loss = GaussianFocalLoss()(x, target, weight=torch.zeros(6, 7))
    loss.backward()
    assert loss.item() == 0 and torch.count_nonzero(x.grad) == 0
    # saturated predictions (0 and 1), the classification extremes here
    x = torch.tensor([[0.0, 1.0, 0.0, 1.0]], requires_grad=True)
    target = torch.tensor([[1.0, 1.0, 0.0, 0.5]])
    loss = GaussianFocalLoss(reduction='sum')(x, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    """eps = 1e-12 vanishes in half precision; computed in float32 the loss
    stays finite even for p = 0 at a peak (its gradient, -1e12 / numel,
    cannot be a half number, so backward runs on the ordinary heatmap)."""
    pred, target = heatmap((4, 6, 6), 0)
    saturated = pred.clone()
    saturated[0, 0, 0], target[0, 0, 0] = 0.0, 1.0
    assert torch.isfinite(GaussianFocalLoss()(saturated.to(dtype),
                                              target.to(dtype)))
    ref = GaussianFocalLoss()(pred, target)
    x = pred.to(dtype).requires_grad_()
    loss = GaussianFocalLoss()(x, target.to(dtype))
    loss.backward()
    # a reduced loss of half inputs is float32 (mmloss.precision)
    assert loss.dtype == torch.float32 and x.grad.dtype == dtype
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert_close(loss.float(), ref, rtol=3e-2, atol=1e-3)


def test_nan_propagates():
    pred, target = heatmap((4, 5), 0)
    pred[1, 2] = float('nan')
    assert torch.isnan(GaussianFocalLoss()(pred, target))
    pos_inds, pos_labels = positives(4, 5, 2, 0)
    assert torch.isnan(GaussianFocalLoss()(pred, target, pos_inds,
                                           pos_labels))


def test_invalid_inputs():
    pred, target = heatmap((4, 5), 0)
    loss = GaussianFocalLoss()
    with pytest.raises(ValueError, match='GaussianFocalLoss: pred has shape'):
        loss(pred, target[:, :4])
    with pytest.raises(ValueError, match='GaussianFocalLoss.*weight'):
        loss(pred, target, weight=torch.ones(3))
    with pytest.raises(ValueError, match='GaussianFocalLoss.*pos_labels'):
        loss(pred, target, torch.tensor([0]))
    with pytest.raises(TypeError, match='GaussianFocalLoss.*pos_labels'):
        loss(pred, target, torch.tensor([0]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match='GaussianFocalLoss'):
        loss(pred, target, torch.tensor([0, 1]), torch.tensor([1]))
    with pytest.raises(ValueError, match="GaussianFocalLoss.*'none'"):
        loss(pred, target, torch.tensor([0]), torch.tensor([1]),
             reduction_override='none')
    with pytest.raises(TypeError, match='GaussianFocalLoss'):
        loss(pred.long(), target)


@pytest.mark.parametrize('kwargs,argument', [
    (dict(alpha=-1.0), 'alpha'),
    (dict(gamma=-1.0), 'gamma'),
    (dict(pos_weight=-1.0), 'pos_weight'),
    (dict(neg_weight=-0.5), 'neg_weight'),
    (dict(loss_weight=-1.0), 'loss_weight'),
])
def test_bad_constructor_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=f'GaussianFocalLoss.*{argument}'):
        GaussianFocalLoss(**kwargs)


def test_unknown_reduction_builds_and_the_call_raises():
    # as in MMDetection, which checks the reduction only when called
    loss = GaussianFocalLoss(reduction='avg')
    with pytest.raises(ValueError, match='GaussianFocalLoss.*reduction'):
        loss(torch.rand(3, 4), torch.rand(3, 4))


def test_built_from_config():
    module = MODELS.build(dict(type='GaussianFocalLoss', gamma=2.0))
    assert isinstance(module, GaussianFocalLoss) and module.gamma == 2.0


# ---------------------------------------------------------------------------
# the engine: exact double backward, autocast
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('reduction,weighted,avg_factor', [
    ('mean', False, None), ('sum', True, None), ('none', True, None),
    ('mean', True, 3.0)])
def test_double_backward_equals_the_plain_formula(reduction, weighted,
                                                  avg_factor):
    pred, target = heatmap((3, 4, 5), 2, peaks=0.1)
    weight = torch.rand(3, 4, 5, dtype=torch.float64) if weighted else None
    module = GaussianFocalLoss(alpha=1.5, gamma=3.0, pos_weight=0.7,
                               neg_weight=1.3, reduction=reduction)

    def loss(x):
        return module(x, target.double(), weight=weight,
                      avg_factor=avg_factor)

    fast = value_grad_hvp(loss, [pred.double()], expect_engine=True)
    plain = value_grad_hvp(loss, [pred.double()], fast=False,
                           expect_engine=False)
    assert_second_order(fast, plain)


def test_index_form_double_backward_equals_the_plain_formula():
    pred, target = heatmap((30, 4), 3, peaks=0.0)
    pos_inds, pos_labels = positives(30, 4, 5, 3)
    module = GaussianFocalLoss(alpha=1.5, gamma=3.0, pos_weight=0.5)

    def loss(x):
        return module(x, target.double(), pos_inds, pos_labels,
                      avg_factor=6.0)

    fast = value_grad_hvp(loss, [pred.double()], expect_engine=True)
    plain = value_grad_hvp(loss, [pred.double()], fast=False,
                           expect_engine=False)
    assert_second_order(fast, plain)


def test_second_derivatives_match_mmdet(mmdet_losses):
    pred, target = heatmap((2, 3, 4, 4), 4, peaks=0.1)
    pos_inds, pos_labels = positives(8, 4, 3, 4)
    hm, hm_target = heatmap((8, 4), 5, peaks=0.0)
    for ours, theirs in ((GaussianFocalLoss(), mmdet_losses.GaussianFocalLoss(
    )), (GaussianFocalLoss(alpha=1.5, gamma=3.0, neg_weight=0.5),
         mmdet_losses.GaussianFocalLoss(alpha=1.5, gamma=3.0,
                                        neg_weight=0.5))):
        results = [value_grad_hvp(
            lambda x: m(x, target.double(), avg_factor=5.0),
            [pred.double()]) for m in (ours, theirs)]
        assert_second_order(*results)
        results = [value_grad_hvp(
            lambda x: m(x, hm_target.double(), pos_inds, pos_labels),
            [hm.double()]) for m in (ours, theirs)]
        assert_second_order(*results)


def test_gradgradcheck():
    pred, target = heatmap((4, 5), 0, peaks=0.2)
    x = pred.double().requires_grad_()
    loss = GaussianFocalLoss(alpha=1.5, gamma=3.0)
    assert torch.autograd.gradgradcheck(
        lambda x: loss(x, target.double(), reduction_override='none'), (x, ))
    pos_inds, pos_labels = positives(4, 5, 3, 0)
    assert torch.autograd.gradgradcheck(
        lambda x: loss(x, target.double(), pos_inds, pos_labels), (x, ))


def test_a_target_that_needs_a_gradient_takes_the_plain_formula(
        mmdet_losses):
    """The kernel gives no target gradient; mmdet's (1 - y)**gamma has
    one: such a call takes the plain formula and gets it."""
    pred, target = heatmap((5, 6), 1, peaks=0.2)
    grads = []
    for module in (GaussianFocalLoss(), mmdet_losses.GaussianFocalLoss()):
        x = pred.double().requires_grad_()
        t = target.double().requires_grad_()
        out = module(x, t)
        out.backward()
        grads.append((x.grad, t.grad))
    assert grads[0][1].abs().max() > 0
    for ours, ref in zip(*grads):
        assert_close(ours, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize('n', [16, 3000])
def test_autocast_gives_the_float32_result(n):
    pred, target = heatmap((n, 6), 6)
    pos_inds, pos_labels = positives(n, 6, 4, 6)
    for extra in ((), (pos_inds, pos_labels)):
        results = []
        for autocast in (False, True):
            x = pred.clone().requires_grad_()
            with torch.autocast('cpu', dtype=torch.bfloat16,
                                enabled=autocast):
                out = GaussianFocalLoss()(x, target, *extra,
                                          avg_factor=n / 4)
            out.backward()
            assert out.dtype == torch.float32
            results.append((out.detach(), x.grad))
        assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-7)
        assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-9)


def test_switch_forces_the_plain_formula():
    pred, target = heatmap((3, 4), 0)
    x = pred.clone().requires_grad_()
    assert 'GradientInForwardBackward' in graph_functions(
        GaussianFocalLoss()(x, target))
    with mmloss.fast_paths(False):
        assert not graph_functions(GaussianFocalLoss()(x, target))


# ---------------------------------------------------------------------------
# issue 14: errors of the index form name the loss
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('pos_inds,pos_labels,error,match', [
    ([6], [0], ValueError, r'pos_inds holds values in \[6, 6\], but pred '
     r'has 6 rows'),
    ([-7], [0], ValueError, r'pos_inds holds values in \[-7, -7\]'),
    ([1], [5], ValueError, r'pos_labels holds 5, but labels must lie in '
     r'\[0, 5\)'),
    ([1], [-1], ValueError, r'pos_labels holds -1'),
    ([1.], [2], TypeError, r'pos_inds must hold integer'),
    ([[1]], [2], ValueError, r'pred must have shape \(N, C\) and '
     r'pos_inds and pos_labels shape \(M,\)'),
])
def test_pos_inds_out_of_range_names_the_loss(pos_inds, pos_labels, error,
                                              match):
    """Indices outside pred raise naming the loss and the argument (were:
    a raw IndexError / RuntimeError from indexing)."""
    pred, target = heatmap((6, 5), 0, peaks=0.0)
    with pytest.raises(error, match='^GaussianFocalLoss: ' + match):
        GaussianFocalLoss()(pred, target, torch.tensor(pos_inds),
                            torch.tensor(pos_labels))


def test_negative_pos_inds_index_as_mmdet(mmdet_losses):
    """Row indices in [-N, 0) count from the end, as mmdet's
    ``pred[pos_inds]`` does."""
    pred, target = heatmap((6, 5), 1, peaks=0.0)
    kw = dict(pos_inds=torch.tensor([-1, 2, -6]),
              pos_labels=torch.tensor([4, 0, 1]))
    value, grad = run(GaussianFocalLoss(), pred, target, **kw)
    ref, ref_grad = run(mmdet_losses.GaussianFocalLoss(), pred, target, **kw)
    assert_close(value, ref)
    grad_close(grad, ref_grad)


def test_pos_inds_sum_with_avg_factor_names_the_loss():
    pred, target = heatmap((6, 5), 0, peaks=0.0)
    pos_inds, pos_labels = positives(6, 5, 2, 0)
    for module, override in ((GaussianFocalLoss(reduction='sum'), None),
                             (GaussianFocalLoss(), 'sum')):
        with pytest.raises(ValueError,
                           match='^GaussianFocalLoss: avg_factor'):
            module(pred, target, pos_inds, pos_labels, avg_factor=2.0,
                   reduction_override=override)
