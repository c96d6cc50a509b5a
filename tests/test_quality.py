"""VarifocalLoss, QualityFocalLoss, DistributionFocalLoss: mmdet 3.3 parity,
hand values, gradcheck and hardening."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from mmloss import MODELS
from mmloss.losses.quality import (DistributionFocalLoss, QualityFocalLoss,
                                   VarifocalLoss, distribution_focal_loss,
                                   quality_focal_loss, varifocal_loss)
from tests.helpers import assert_close

REDUCTIONS = ('none', 'mean', 'sum')
AVG_FACTORS = (None, 0, 6.5)


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
        assert loss.dtype == dtype and x.grad.dtype == dtype
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
    (DistributionFocalLoss, dict(reduction='avg'), 'reduction'),
])
def test_bad_constructor_arguments(cls, kwargs, argument):
    with pytest.raises(ValueError, match=f'{cls.__name__}.*{argument}'):
        cls(**kwargs)


def test_built_from_config():
    for name in ('VarifocalLoss', 'QualityFocalLoss',
                 'DistributionFocalLoss'):
        module = MODELS.build(dict(type=name))
        assert type(module).__name__ == name
    assert MODELS.build(dict(type='QualityFocalLoss')).use_sigmoid is True
    assert MODELS.build(dict(type='VarifocalLoss')).use_sigmoid is True
