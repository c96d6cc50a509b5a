"""VarifocalLoss, QualityFocalLoss, DistributionFocalLoss: mmdet 3.3 parity,
hand values, gradcheck and hardening."""
import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import mmloss
from mmloss import MODELS
from mmloss.engine import dispatch
from mmloss.losses.quality import (DistributionFocalLoss, QualityFocalLoss,
                                   VarifocalLoss, distribution_focal_loss,
                                   quality_focal_loss, varifocal_loss)
from tests.helpers import assert_close, outputs_and_grads
from tests.test_focal import (assert_second_order, graph_functions,
                              value_grad_hvp)

REDUCTIONS = ('none', 'mean', 'sum')
AVG_FACTORS = (None, 0, 6.5)


@pytest.fixture(autouse=True)
def fast_paths_for_every_size(monkeypatch):
    """The tests here use small inputs; run the fast paths on them too (by
    default the dispatch table sends small DFL inputs to the plain
    formula)."""
    for kind, entry in list(dispatch.TUNING.items()):
        monkeypatch.setitem(dispatch.TUNING, kind, dataclasses.replace(
            entry, min_rows={key: rows for key, rows in entry.min_rows.items()
                             if key != 'DistributionFocalLoss'}))


def grad_close(grad, ref, what=''):
    """rtol 1e-5 relative to the largest entry (avg_factor=0 scales every
    entry by 1 / eps ~ 8e6; mmdet's float32 BCE-with-logits itself is only
    ~1e-5 accurate on tiny entries)."""
    scale = ref.abs().max().clamp(min=1.0)
    assert_close(grad / scale, ref / scale, what=what)


def compare(ours, theirs, pred, target, weight=None):
    """Every reduction and avg_factor through reduction_override."""
    for reduction, avg_factor in itertools.product(REDUCTIONS, AVG_FACTORS):
        if reduction == 'sum' and avg_factor is not None:
            continue
        results = []
        for module in (ours, theirs):
            x = pred.clone().requires_grad_()
            loss = module(x, target, weight, avg_factor=avg_factor,
                          reduction_override=reduction)
            loss.sum().backward()
            results.append((loss.detach(), x.grad))
        (value, grad), (ref, ref_grad) = results
        what = f'{reduction} avg_factor={avg_factor}'
        assert_close(value, ref, what=what)
        grad_close(grad, ref_grad, what=what + ' grad')


def vfl_inputs(n, c, seed):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, c, generator=g) * 2
    target = torch.zeros(n, c)
    rows = torch.rand(n, generator=g) < 0.3
    cols = torch.randint(0, c, (n, ), generator=g)
    target[rows, cols[rows]] = torch.rand(int(rows.sum()), generator=g)
    return pred, target


def qfl_inputs(n, c, seed):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, c, generator=g) * 2
    labels = torch.randint(0, c + 1, (n, ), generator=g)
    scores = torch.rand(n, generator=g) * (labels < c)
    return pred, labels, scores


def dfl_inputs(n, bins, seed):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, bins, generator=g)
    label = torch.rand(n, generator=g) * (bins - 1 - 0.01)
    return pred, label


# ---------------------------------------------------------------------------
# VarifocalLoss
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('iou_weighted', [True, False])
def test_varifocal_matches_mmdet(mmdet_losses, seed, iou_weighted):
    pred, target = vfl_inputs(40, 6, seed)
    kwargs = dict(iou_weighted=iou_weighted, alpha=0.6, gamma=1.5,
                  loss_weight=0.8)
    ours, theirs = VarifocalLoss(**kwargs), mmdet_losses.VarifocalLoss(
        **kwargs)
    g = torch.Generator().manual_seed(seed)
    for weight in (None, torch.rand(40, 6, generator=g),
                   torch.rand(40, 1, generator=g)):
        compare(ours, theirs, pred, target, weight)


def test_varifocal_large_matches_mmdet(mmdet_losses):
    pred, target = vfl_inputs(100_000, 80, 3)
    compare_once = [VarifocalLoss(), mmdet_losses.VarifocalLoss()]
    results = []
    for module in compare_once:
        x = pred.clone().requires_grad_()
        loss = module(x, target, avg_factor=3000.0)
        loss.backward()
        results.append((loss.detach(), x.grad))
    assert_close(results[0][0], results[1][0])
    grad_close(results[0][1], results[1][1])


def test_varifocal_hand_values():
    # x = 0 (p = 1/2): negative 0.75 * 0.5**2 * log 2; positive with
    # q = 0.5: 0.5 * BCE(0, 0.5) = 0.5 * log 2
    loss = VarifocalLoss(reduction='none')(torch.zeros(1, 2),
                                           torch.tensor([[0.0, 0.5]]))
    assert_close(loss, torch.tensor([[0.1875 * math.log(2),
                                      0.5 * math.log(2)]]))


def test_varifocal_gradcheck():
    pred, target = vfl_inputs(6, 4, 0)
    x = pred.double().requires_grad_()
    loss = VarifocalLoss(gamma=1.5)
    assert torch.autograd.gradcheck(
        lambda x: loss(x, target.double(), avg_factor=2.0), (x, ))


# ---------------------------------------------------------------------------
# QualityFocalLoss
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('activated', [False, True])
def test_qfl_labels_match_mmdet(mmdet_losses, seed, activated):
    pred, labels, scores = qfl_inputs(45, 7, seed)
    if activated:
        pred = pred.sigmoid()
    ours = QualityFocalLoss(beta=1.5, activated=activated)
    theirs = mmdet_losses.QualityFocalLoss(beta=1.5, activated=activated)
    g = torch.Generator().manual_seed(seed)
    for weight in (None, torch.rand(45, generator=g)):
        compare(ours, theirs, pred, (labels, scores), weight)


@pytest.mark.parametrize('seed', [0, 1])
@pytest.mark.parametrize('activated', [False, True])
def test_qfl_soft_target_matches_mmdet(mmdet_losses, seed, activated):
    pred, target = vfl_inputs(30, 5, seed)
    if activated:
        pred = pred.sigmoid()
    ours = QualityFocalLoss(activated=activated)
    theirs = mmdet_losses.QualityFocalLoss(activated=activated)
    compare(ours, theirs, pred, target)
    compare(ours, theirs, pred, target, torch.rand(30))


def test_qfl_large_matches_mmdet(mmdet_losses):
    pred, labels, scores = qfl_inputs(100_000, 80, 4)
    labels[torch.rand(100_000) < 0.9] = 80
    results = []
    for module in (QualityFocalLoss(), mmdet_losses.QualityFocalLoss()):
        x = pred.clone().requires_grad_()
        loss = module(x, (labels, scores), avg_factor=5000.0)
        loss.backward()
        results.append((loss.detach(), x.grad))
    assert_close(results[0][0], results[1][0])
    grad_close(results[0][1], results[1][1])


def test_qfl_label_and_soft_forms_agree():
    pred, labels, scores = qfl_inputs(20, 4, 5)
    dense = torch.zeros(20, 5)
    dense[torch.arange(20), labels] = scores
    dense = dense[:, :4]
    # soft form treats a zero score as a negative; so does the label form
    assert_close(quality_focal_loss(pred, (labels, scores), reduction='none'),
                 quality_focal_loss(pred, dense, reduction='none'))


def test_qfl_hand_values():
    # x = 0, label 0 with score 0.5: |0.5 - 0.5|**2 * ... = 0; class 1 is a
    # negative: 0.5**2 * log 2
    loss = QualityFocalLoss(reduction='none')(
        torch.zeros(1, 2), (torch.tensor([0]), torch.tensor([0.5])))
    assert_close(loss, torch.tensor([0.25 * math.log(2)]))


@pytest.mark.parametrize('activated', [False, True])
def test_qfl_gradcheck(activated):
    pred, labels, scores = qfl_inputs(6, 4, 1)
    pred = pred.double()
    if activated:
        pred = pred.sigmoid()
    loss = QualityFocalLoss(activated=activated, beta=2.0)
    x = pred.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: loss(x, (labels, scores.double()), reduction_override='sum'),
        (x, ))
    target = torch.rand(6, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: loss(x, target), (x, ))


@pytest.mark.parametrize('iou_weighted', [True, False])
@pytest.mark.parametrize('gamma', [2.0, 1.5])
def test_varifocal_fast_path_matches_autograd(iou_weighted, gamma):
    """The analytic gradient, including negative targets (q < 0)."""
    pred, target = vfl_inputs(30, 5, 7)
    target[0, :] = -0.3
    pred, target = pred.double(), target.double()
    weight = torch.rand(30, 5, dtype=torch.float64)
    x = pred.clone().requires_grad_()
    fast = varifocal_loss(x, target, weight, 0.5, gamma, iou_weighted,
                          reduction='none')
    fast.sum().backward()
    w = weight.clone().requires_grad_()  # takes the autograd path
    y = pred.clone().requires_grad_()
    plain = varifocal_loss(y, target, w, 0.5, gamma, iou_weighted,
                           reduction='none')
    plain.sum().backward()
    assert_close(fast, plain.detach(), rtol=1e-10, atol=1e-12)
    assert_close(x.grad, y.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('alpha,gamma', [(0.75, 2.0), (0.5, 1.5),
                                         (0.0, 2.0), (0.6, 0.0)])
@pytest.mark.parametrize('weight_shape', [None, (30, 5), (30, 1), (5, )])
@pytest.mark.parametrize('iou_weighted', [True, False])
def test_varifocal_cpu_path_equals_dense_kernel(alpha, gamma, weight_shape,
                                               iou_weighted):
    """On the CPU the focal kernel computes every entry as a negative and
    the non-zero targets (positives, and q < 0) are recomputed: the same
    loss (element-wise and summed) and gradient as the dense kernel."""
    from mmloss.losses.quality import (_varifocal_mostly_zero,
                                       varifocal_kernel)
    pred, target = vfl_inputs(30, 5, 11)
    target[0, :2] = -0.3
    target[1] = 0.0
    pred, target = pred.double(), target.double()
    g = torch.Generator().manual_seed(5)
    weight = None if weight_shape is None else torch.rand(
        weight_shape, generator=g, dtype=torch.float64)
    for reduce_sum in (False, True):
        loss, grad, scale = _varifocal_mostly_zero(
            pred, target, weight, alpha, gamma, iou_weighted, reduce_sum,
            True)
        ref_loss, ref_grad = varifocal_kernel(
            pred, target, weight, alpha, gamma, iou_weighted, reduce_sum,
            True)
        assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
        assert_close(grad * scale, ref_grad, rtol=1e-12, atol=1e-12)
    # all targets 0: nothing to recompute
    zero = torch.zeros_like(target)
    loss, grad, scale = _varifocal_mostly_zero(
        pred, zero, weight, alpha, gamma, iou_weighted, False, True)
    ref_loss, ref_grad = varifocal_kernel(pred, zero, weight, alpha, gamma,
                                          iou_weighted, False, True)
    assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    assert_close(grad * scale, ref_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('beta', [2.0, 1.0, 0.5])
def test_qfl_fast_path_matches_autograd(beta):
    from mmloss.losses.quality import quality_focal_loss_labels
    pred, labels, scores = qfl_inputs(40, 6, 8)
    pred, scores = pred.double(), scores.double()
    x = pred.clone().requires_grad_()
    fast = quality_focal_loss(x, (labels, scores), beta=beta,
                              reduction='none')
    (fast * torch.arange(40)).sum().backward()
    y = pred.clone().requires_grad_()
    plain = quality_focal_loss_labels(y, labels, scores, beta)
    (plain * torch.arange(40)).sum().backward()
    assert_close(fast, plain.detach(), rtol=1e-10, atol=1e-12)
    assert_close(x.grad, y.grad, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------
# DistributionFocalLoss
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_dfl_matches_mmdet(mmdet_losses, seed):
    pred, label = dfl_inputs(50, 17, seed)
    ours = DistributionFocalLoss(loss_weight=0.25)
    theirs = mmdet_losses.DistributionFocalLoss(loss_weight=0.25)
    for weight in (None, torch.rand(50)):
        compare(ours, theirs, pred, label, weight)


def test_dfl_hand_values_and_last_bin():
    # uniform logits over 3 bins: -log(1/3) whatever the split
    pred = torch.zeros(2, 3)
    loss = distribution_focal_loss(pred, torch.tensor([0.3, 1.0]),
                                   reduction='none')
    assert_close(loss, torch.full((2, ), math.log(3)))
    # the last bin: mmdet indexes past the end; we give -log S_n
    pred = torch.tensor([[0.0, 0.0, math.log(2)]], requires_grad=True)
    loss = distribution_focal_loss(pred, torch.tensor([2.0]))
    loss.backward()
    assert_close(loss, torch.tensor(math.log(2)))
    assert torch.isfinite(pred.grad).all()


def test_dfl_gradcheck():
    pred, label = dfl_inputs(5, 6, 0)
    x = pred.double().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: DistributionFocalLoss()(x, label.double()), (x, ))


# ---------------------------------------------------------------------------
# hardening, shared by the three
# ---------------------------------------------------------------------------
def _cases(n=12, c=5):
    pred, target = vfl_inputs(n, c, 0)
    qpred, labels, scores = qfl_inputs(n, c, 0)
    dpred, dlabel = dfl_inputs(n, c, 0)
    return [(VarifocalLoss(), pred, target),
            (QualityFocalLoss(), qpred, (labels, scores)),
            (QualityFocalLoss(), pred, target),
            (DistributionFocalLoss(), dpred, dlabel)]


@pytest.mark.parametrize('reduction', REDUCTIONS)
def test_empty_inputs(reduction):
    """Empty inputs: a finite zero connected to the graph (mmdet's 'mean'
    is 0/0 = NaN there)."""
    for module, pred, target in _cases(0):
        x = pred.clone().requires_grad_()
        loss = module(x, target, reduction_override=reduction)
        assert torch.isfinite(loss).all() and loss.sum().item() == 0
        loss.sum().backward()
        assert x.grad.shape == x.shape


def test_zero_weights_and_all_background():
    for module, pred, target in _cases():
        x = pred.clone().requires_grad_()
        weight = torch.zeros(pred.shape if isinstance(
            module, VarifocalLoss) else pred.shape[:1])
        loss = module(x, target, weight)
        loss.backward()
        assert loss.item() == 0 and torch.count_nonzero(x.grad) == 0
    pred = torch.randn(10, 3)
    loss = QualityFocalLoss()(pred, (torch.full((10, ), 3), torch.zeros(10)))
    assert_close(loss, (pred.sigmoid()**2 * F.softplus(pred)).sum(1).mean())


def test_extreme_logits():
    pred = torch.tensor([[100., -100.], [-100., 100.]])
    target = torch.tensor([[1.0, 0.0], [0.7, 0.0]])
    cases = [(VarifocalLoss(), target),
             (QualityFocalLoss(), (torch.tensor([0, 2]), torch.tensor([1.,
                                                                      0.]))),
             (QualityFocalLoss(), target),
             (DistributionFocalLoss(), torch.tensor([0.5, 1.0]))]
    for module, tgt in cases:
        x = pred.clone().requires_grad_()
        loss = module(x, tgt, reduction_override='sum')
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_dfl_where_the_softmax_underflows():
    """Target bins far below the row's largest logit: their softmax entries
    are 0 or subnormal in float32, so the loss comes from the logits and
    still equals the float64 log-softmax formula (and stays finite)."""
    pred = torch.tensor([[0.0, 120.0, -5.0], [300.0, 0.0, -300.0],
                         [1.0, 2.0, 3.0]])
    label = torch.tensor([0.25, 1.5, 0.0])
    x = pred.clone().requires_grad_()
    loss = distribution_focal_loss(x, label, reduction='none')
    log_prob = F.log_softmax(pred.double(), dim=1)
    left = label.long()
    right = (left + 1).clamp(max=2)
    w_left = left + 1 - label.double()
    expected = -(log_prob[torch.arange(3), left] * w_left +
                 log_prob[torch.arange(3), right] * (1 - w_left))
    assert_close(loss.double(), expected, rtol=1e-6)
    loss.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    for module, pred, target in _cases():
        ref = module(pred, target)
        x = pred.to(dtype).requires_grad_()
        loss = module(x, target)
        loss.backward()
        # a reduced loss of half inputs is float32 (mmloss.precision)
        assert loss.dtype == torch.float32 and x.grad.dtype == dtype
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
        assert_close(loss.float(), ref, rtol=3e-2, atol=1e-3)


def test_nan_propagates():
    for module, pred, target in _cases():
        pred = pred.clone()
        pred[1, 1] = float('nan')
        assert torch.isnan(module(pred, target))


def test_invalid_inputs():
    pred, target = vfl_inputs(8, 3, 0)
    with pytest.raises(ValueError, match='VarifocalLoss: pred has shape'):
        VarifocalLoss()(pred, target[:, :2])
    with pytest.raises(ValueError, match='VarifocalLoss.*weight'):
        VarifocalLoss()(pred, target, torch.ones(5))
    labels, scores = torch.zeros(8, dtype=torch.long), torch.rand(8)
    with pytest.raises(TypeError, match='QualityFocalLoss.*labels'):
        QualityFocalLoss()(pred, (labels.float(), scores))
    with pytest.raises(ValueError, match=r'QualityFocalLoss.*\[0, 3\]'):
        QualityFocalLoss()(pred, (labels + 4, scores))
    with pytest.raises(ValueError, match='QualityFocalLoss'):
        QualityFocalLoss()(pred, (labels - 1, scores))
    with pytest.raises(ValueError, match='QualityFocalLoss'):
        QualityFocalLoss()(pred, (labels[:5], scores))
    with pytest.raises(TypeError, match='QualityFocalLoss'):
        QualityFocalLoss()(pred, (labels, scores, scores))
    with pytest.raises(ValueError, match=r'DistributionFocalLoss.*\[0, 2\]'):
        DistributionFocalLoss()(pred, torch.full((8, ), 2.5))
    with pytest.raises(ValueError, match='DistributionFocalLoss'):
        DistributionFocalLoss()(pred, torch.full((8, ), -0.5))
    with pytest.raises(ValueError, match='DistributionFocalLoss'):
        DistributionFocalLoss()(pred, torch.zeros(7))
    with pytest.raises(ValueError, match='VarifocalLoss.*reduction_override'):
        VarifocalLoss()(pred, target, reduction_override='avg')
    with pytest.raises(ValueError, match='varifocal_loss.*reduction'):
        varifocal_loss(pred, target, reduction='avg')


@pytest.mark.parametrize('cls,kwargs,argument', [
    (VarifocalLoss, dict(use_sigmoid=False), 'use_sigmoid'),
    (VarifocalLoss, dict(alpha=-0.5), 'alpha'),
    (VarifocalLoss, dict(gamma=-1), 'gamma'),
    (VarifocalLoss, dict(loss_weight=-1), 'loss_weight'),
    (QualityFocalLoss, dict(use_sigmoid=False), 'use_sigmoid'),
    (QualityFocalLoss, dict(beta=-2), 'beta'),
    (QualityFocalLoss, dict(loss_weight=-1), 'loss_weight'),
    (DistributionFocalLoss, dict(loss_weight=-1), 'loss_weight'),
])
def test_bad_constructor_arguments(cls, kwargs, argument):
    with pytest.raises(ValueError, match=f'{cls.__name__}.*{argument}'):
        cls(**kwargs)


def test_unknown_reduction_builds_and_the_call_raises():
    # as in MMDetection, which checks the reduction only when called
    loss = DistributionFocalLoss(reduction='avg')
    with pytest.raises(ValueError, match='DistributionFocalLoss.*reduction'):
        loss(torch.randn(3, 5), torch.tensor([0.5, 1.0, 3.2]))


def test_built_from_config():
    for name in ('VarifocalLoss', 'QualityFocalLoss',
                 'DistributionFocalLoss'):
        module = MODELS.build(dict(type=name))
        assert type(module).__name__ == name
    assert MODELS.build(dict(type='QualityFocalLoss')).use_sigmoid is True
    assert MODELS.build(dict(type='VarifocalLoss')).use_sigmoid is True


# ---------------------------------------------------------------------------
# the engine: exact double backward, dispatch, the CPU-only branches,
# autocast
# ---------------------------------------------------------------------------
def _double_inputs():
    vpred, vtarget = vfl_inputs(17, 5, 3)
    vtarget[0, :2] = -0.2  # q < 0: a negative with its own |p - q|
    qpred, labels, scores = qfl_inputs(17, 5, 3)
    dpred, dlabel = dfl_inputs(17, 6, 3)
    return [
        ('vfl', VarifocalLoss(gamma=1.5), vpred, vtarget.double(), {}),
        ('vfl-none', VarifocalLoss(iou_weighted=False, reduction='none'),
         vpred, vtarget.double(), dict(weight=torch.rand(17, 5).double())),
        ('qfl', QualityFocalLoss(beta=1.5), qpred,
         (labels, scores.double()), dict(weight=torch.rand(17).double())),
        ('dfl', DistributionFocalLoss(reduction='sum'), dpred,
         dlabel.double(), {}),
    ]


@pytest.mark.parametrize('kind', ['cpu', 'cuda'])
@pytest.mark.parametrize('case', range(4))
def test_double_backward_equals_the_plain_formula(case, kind):
    """create_graph=True gives a gradient with a graph whose derivative
    equals the plain formula's, on the CPU's kernels and (pretended) on an
    accelerator's."""
    name, module, pred, target, kwargs = _double_inputs()[case]
    with dispatch.pretend_device(kind):
        fast = value_grad_hvp(lambda x: module(x, target, **kwargs),
                              [pred.double()], expect_engine=True)
    plain = value_grad_hvp(lambda x: module(x, target, **kwargs),
                           [pred.double()], fast=False, expect_engine=False)
    assert_second_order(fast, plain, what=f'{name} on {kind}')


@pytest.mark.parametrize('case', range(4))
def test_second_derivatives_match_mmdet(mmdet_losses, case):
    name, module, pred, target, kwargs = _double_inputs()[case]
    theirs = getattr(mmdet_losses, type(module).__name__)(
        **{key: getattr(module, key) for key in
           ('gamma', 'alpha', 'iou_weighted', 'beta', 'reduction')
           if hasattr(module, key)})
    results = [value_grad_hvp(lambda x: m(x, target, **kwargs),
                              [pred.double()]) for m in (module, theirs)]
    assert_second_order(*results, what=name)


def test_gradgradcheck():
    vpred, vtarget = vfl_inputs(6, 4, 0)
    vtarget[0, 0] = -0.3
    x = vpred.double().requires_grad_()
    for kind in ('cpu', 'cuda'):
        with dispatch.pretend_device(kind):
            assert torch.autograd.gradgradcheck(
                lambda x: VarifocalLoss(gamma=1.5)(x, vtarget.double()),
                (x, ))
    qpred, labels, scores = qfl_inputs(6, 4, 1)
    x = qpred.double().requires_grad_()
    assert torch.autograd.gradgradcheck(
        lambda x: QualityFocalLoss(beta=1.5)(x, (labels, scores.double()),
                                             reduction_override='none'),
        (x, ))
    dpred, dlabel = dfl_inputs(5, 6, 0)
    x = dpred.double().requires_grad_()
    assert torch.autograd.gradgradcheck(
        lambda x: DistributionFocalLoss()(x, dlabel.double()), (x, ))


def test_targets_that_need_a_gradient_take_the_plain_formula(mmdet_losses):
    """The kernels give no target gradient: a target that needs one takes
    the plain formula (mmdet's gradient), never a silent zero."""
    vpred, vtarget = vfl_inputs(12, 4, 0)
    qpred, labels, scores = qfl_inputs(12, 4, 0)
    dpred, dlabel = dfl_inputs(12, 6, 0)
    cases = [(VarifocalLoss, vpred, lambda t: t, vtarget),
             (QualityFocalLoss, qpred, lambda t: (labels, t), scores),
             (DistributionFocalLoss, dpred, lambda t: t, dlabel)]
    for cls, pred, wrap, target in cases:
        grads = []
        for module in (cls(), getattr(mmdet_losses, cls.__name__)()):
            t = target.double().clone().requires_grad_()
            x = pred.double().clone().requires_grad_()
            out = module(x, wrap(t))
            if module.__module__.startswith('mmloss'):
                assert not graph_functions(out), cls.__name__
            out.backward()
            grads.append((x.grad, t.grad))
        assert grads[0][1].abs().max() > 0
        for ours, ref in zip(*grads):
            assert_close(ours, ref, rtol=1e-9, atol=1e-12,
                         what=cls.__name__)


def test_varifocal_accelerator_branch_equals_the_plain_formula():
    """Off the CPU the varifocal kernel runs over every entry (no search
    for the non-zero targets): forced with pretend_device, it gives the
    plain formula's value and gradient for every reduction."""
    pred, target = vfl_inputs(40, 6, 5)
    target[3, :3] = -0.5
    pred, target = pred.double(), target.double()
    weight = torch.rand(40, 1, dtype=torch.float64)
    for reduction in REDUCTIONS:
        results = []
        for fast, kind in ((True, 'cuda'), (False, 'cpu')):
            x = pred.clone().requires_grad_()
            with mmloss.fast_paths(fast), dispatch.pretend_device(kind):
                out = varifocal_loss(x, target, weight, reduction=reduction)
                assert ('GradientInForwardBackward' in
                        graph_functions(out)) == fast
            out.sum().backward()
            results.append((out.detach(), x.grad))
        assert_close(*[r[0] for r in results], rtol=1e-12, atol=1e-14)
        assert_close(*[r[1] for r in results], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize('kind', ['cpu', 'cuda'])
def test_dfl_kernel_where_the_softmax_underflows_on_each_device(kind):
    """The CPU recomputes only the underflowed rows, an accelerator selects
    (no host sync); both give the plain formula's value and gradient."""
    pred = torch.tensor([[0.0, 120.0, -5.0], [300.0, 0.0, -300.0],
                         [1.0, 2.0, 3.0], [0.5, 0.0, 0.2]])
    label = torch.tensor([0.25, 1.5, 0.0, 2.0])
    results = []
    for fast in (True, False):
        x = pred.clone().requires_grad_()
        with mmloss.fast_paths(fast), dispatch.pretend_device(kind):
            out = distribution_focal_loss(x, label, reduction='none')
            assert ('GradientInForwardBackward' in graph_functions(out)) \
                == fast
        (out * torch.arange(1.0, 5.0)).sum().backward()
        results.append((out.detach(), x.grad))
    assert_close(results[0][0], results[1][0], rtol=1e-6)
    assert_close(results[0][1], results[1][1], rtol=1e-6)


def test_dfl_range_check_is_queued_on_an_accelerator():
    """Off the CPU the distance check never waits for the device: it is an
    asynchronous assert (on CPU tensors it fires at once)."""
    pred = torch.randn(4, 3)
    with dispatch.pretend_device('cuda'):
        distribution_focal_loss(pred, torch.tensor([0.0, 1.0, 2.0, 0.5]))
        with pytest.raises(RuntimeError, match='distribution_focal_loss'):
            distribution_focal_loss(pred, torch.full((4, ), 2.5))


def test_dfl_min_rows_of_the_dispatch_table(monkeypatch):
    """Fewer rows than the table's min_rows take the plain formula."""
    entry = dataclasses.replace(dispatch.TUNING['cpu'],
                                min_rows={'DistributionFocalLoss': 20})
    monkeypatch.setitem(dispatch.TUNING, 'cpu', entry)
    pred, label = dfl_inputs(20, 5, 0)
    for n, engine in ((19, False), (20, True)):
        x = pred[:n].clone().requires_grad_()
        out = DistributionFocalLoss()(x, label[:n])
        assert ('GradientInForwardBackward' in graph_functions(out)) == \
            engine
    assert 'DistributionFocalLoss' in dispatch.TUNING['cpu'].min_rows


@pytest.mark.parametrize('n', [16, 3000])
def test_autocast_gives_the_float32_result(n):
    vpred, vtarget = vfl_inputs(n, 7, 1)
    qpred, labels, scores = qfl_inputs(n, 7, 1)
    dpred, dlabel = dfl_inputs(n, 9, 1)
    cases = [(VarifocalLoss(), vpred, vtarget),
             (QualityFocalLoss(), qpred, (labels, scores)),
             (QualityFocalLoss(), vpred, vtarget),
             (QualityFocalLoss(activated=True), qpred.sigmoid(),
              (labels, scores)),
             (DistributionFocalLoss(), dpred, dlabel)]
    for module, pred, target in cases:
        results = []
        for autocast in (False, True):
            x = pred.clone().requires_grad_()
            with torch.autocast('cpu', dtype=torch.bfloat16,
                                enabled=autocast):
                out = module(x, target, avg_factor=n / 2)
            out.backward()
            assert out.dtype == torch.float32
            results.append((out.detach(), x.grad))
        assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-7)
        assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-9)


def test_function_errors_name_the_function_and_the_shapes():
    pred, target = vfl_inputs(8, 3, 0)
    with pytest.raises(ValueError, match=r'quality_focal_loss: pred has '
                       r'shape \(8, 3\) but target has shape \(8, 2\)'):
        quality_focal_loss(pred, target[:, :2])
    with pytest.raises(ValueError, match=r'quality_focal_loss: weight has '
                       r'shape \(3,\)'):
        quality_focal_loss(pred, target, weight=torch.ones(3))
    with pytest.raises(ValueError, match=r'distribution_focal_loss: pred '
                       r'must have shape \(N, n \+ 1\)'):
        distribution_focal_loss(pred, torch.zeros(7))
    with pytest.raises(TypeError, match='varifocal_loss: pred'):
        varifocal_loss(pred.long(), target)


# ---------------------------------------------------------------------------
# issue 14: saturated probabilities, errors naming the loss, target grads
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('target_kind', ['labels', 'soft'])
@pytest.mark.parametrize('reduction', REDUCTIONS)
def test_qfl_activated_saturated_probabilities_match_mmdet(
        mmdet_losses, target_kind, reduction):
    """Probabilities of exactly 0 and 1 (float32 sigmoid of 20 and -120,
    TOOD's ``activated=True``): mmdet's finite gradient, not NaN."""
    prob = torch.sigmoid(torch.tensor([[20., -120., .5], [-120., 20., -1.],
                                       [20., 20., -120.]]))
    labels, scores = torch.tensor([1, 0, 3]), torch.tensor([.5, 1., 0.])
    if target_kind == 'labels':
        target = (labels, scores)
    else:
        target = F.one_hot(labels, 4)[:, :3] * scores[:, None]
    (loss, grad), (ref_loss, ref_grad) = outputs_and_grads(
        (QualityFocalLoss(activated=True, reduction=reduction),
         mmdet_losses.QualityFocalLoss(activated=True, reduction=reduction)),
        prob, target)
    assert torch.isfinite(ref_grad).all() and torch.isfinite(grad).all()
    assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('reduction', REDUCTIONS)
@pytest.mark.parametrize('iou_weighted', [True, False])
def test_varifocal_target_gradient_equals_mmdet(mmdet_losses, reduction,
                                                iou_weighted):
    """A target that requires grad gets mmdet's gradient (never dropped),
    with a weight and every reduction."""
    pred, target = vfl_inputs(10, 4, 1)
    weight = torch.rand(10, 4, generator=torch.Generator().manual_seed(2))
    grads = []
    for module in (VarifocalLoss(iou_weighted=iou_weighted,
                                 reduction=reduction),
                   mmdet_losses.VarifocalLoss(iou_weighted=iou_weighted,
                                              reduction=reduction)):
        t = target.clone().requires_grad_()
        module(pred, t, weight).sum().backward()
        grads.append(t.grad)
    assert grads[0] is not None and grads[0].abs().max() > 0
    assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('name', ['QualityFocalLoss', 'DistributionFocalLoss'])
def test_sum_with_avg_factor_names_the_loss(name):
    """'sum' with avg_factor (by the module or by reduction_override)
    raises naming the loss, not ``weight_reduce_loss``."""
    if name == 'QualityFocalLoss':
        pred, labels, scores = qfl_inputs(6, 3, 0)
        target = (labels, scores)
    else:
        pred, target = dfl_inputs(6, 5, 0)
    cls = QualityFocalLoss if name == 'QualityFocalLoss' else \
        DistributionFocalLoss
    for module, override in ((cls(reduction='sum'), None), (cls(), 'sum')):
        with pytest.raises(ValueError, match=rf'^{name}: avg_factor'):
            module(pred, target, avg_factor=2.0,
                   reduction_override=override)


@pytest.mark.parametrize('cls', [VarifocalLoss, QualityFocalLoss,
                                 DistributionFocalLoss])
def test_unknown_forward_keyword_names_the_loss(cls):
    """The three share one forward: an unknown keyword names the class
    called, not the shared base."""
    with pytest.raises(TypeError, match=rf'^{cls.__name__}: unexpected '
                       r"keyword arguments \['beta'\]"):
        cls()(torch.zeros(2, 3), torch.zeros(2, 3), beta=1.0)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_sums_past_the_fp16_range_stay_finite(dtype):
    """A reduced loss of half inputs is float32: 16000 background entries
    of logit 10 sum to about 160000 (fp16's largest is 65504), which came
    back as inf once cast to fp16; 'none' keeps the input dtype."""
    big = torch.full((200, 80), 10.0, dtype=dtype)
    labels, scores = torch.full((200, ), 80), torch.zeros(200)
    reference = QualityFocalLoss(reduction='sum')(big.float(),
                                                  (labels, scores))
    total = QualityFocalLoss(reduction='sum')(big, (labels, scores))
    assert total.dtype == torch.float32 and reference > 65504
    assert_close(total, reference, rtol=1e-6, atol=0)
    rows = QualityFocalLoss(reduction='none')(big, (labels, scores))
    assert rows.dtype == dtype and torch.isfinite(rows).all()
    soft = VarifocalLoss(reduction='sum')(big, torch.zeros(200, 80,
                                                           dtype=dtype))
    assert soft.dtype == torch.float32 and torch.isfinite(soft)
