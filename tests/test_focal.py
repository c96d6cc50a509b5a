"""FocalLoss and Poly1FocalLoss: mmdet 3.3 parity, hand values, hardening."""
import dataclasses
import functools
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import mmloss
from mmloss import MODELS
from mmloss.engine import dispatch
from mmloss.engine.functions import GradientInBackward, IncomingGradient
from mmloss.losses import focal, focal_kernels
from mmloss.losses.focal import (FocalLoss, Poly1FocalLoss,
                                 elementwise_focal_loss, poly1_focal_loss,
                                 sigmoid_focal_loss)
from tests.helpers import assert_close, outputs_and_grads

FOCAL_NAMES = ('FocalLoss', 'Poly1FocalLoss')
#: the CPU table's thresholds as shipped (read before any fixture patches it)
SHIPPED_MIN_ROWS = dict(dispatch.TUNING['cpu'].min_rows)


@pytest.fixture(autouse=True)
def fast_paths_for_every_size(monkeypatch):
    """The tests here use small inputs; run the kernel on them too (by
    default the dispatch table sends fewer than ``min_rows`` rows to the
    plain formula, which is faster there). Tests that ask for the table
    as it is use :func:`table_as_shipped`."""
    for kind, entry in list(dispatch.TUNING.items()):
        monkeypatch.setitem(dispatch.TUNING, kind, dataclasses.replace(
            entry, min_rows={key: rows for key, rows in entry.min_rows.items()
                             if key not in FOCAL_NAMES}))


def test_min_rows_of_the_dispatch_table(monkeypatch):
    """Fewer rows than the table's ``min_rows`` take the plain formula, as
    many or more the kernel; both give the same value and gradient."""
    entry = dataclasses.replace(dispatch.TUNING['cpu'],
                                min_rows={name: 20 for name in FOCAL_NAMES})
    monkeypatch.setitem(dispatch.TUNING, 'cpu', entry)
    gen = torch.Generator().manual_seed(4)
    pred = torch.randn(20, 6, generator=gen)
    labels = torch.randint(0, 7, (20, ), generator=gen)
    for cls in (FocalLoss, Poly1FocalLoss):
        for n, engine in ((19, False), (20, True)):
            x = pred[:n].clone().requires_grad_()
            out = cls()(x, labels[:n])
            assert ('GradientInBackwardBackward' in graph_functions(out)) \
                == engine
            out.backward()
            y = pred[:n].clone().requires_grad_()
            with mmloss.fast_paths(False):
                reference = cls()(y, labels[:n])
            reference.backward()
            assert_close(out, reference)
            assert_close(x.grad, y.grad)


def test_the_shipped_table_sends_small_focal_inputs_to_the_plain_formula():
    """~1k rows of 80 classes (an RoI head's or a small anchor head's
    batch): the plain formula; the table's threshold straddled by the
    harness (tests/test_paths.py)."""
    assert SHIPPED_MIN_ROWS['FocalLoss'] == 2048
    assert SHIPPED_MIN_ROWS['Poly1FocalLoss'] == 2048

REDUCTIONS = ('none', 'mean', 'sum')
WEIGHT_KINDS = ('none', 'row', 'row_column', 'class', 'flat')


def make_inputs(n, c, seed, background=0.5, dtype=torch.float32, scale=2.0):
    """Logits (n, c) and labels (n,) in [0, c] with a background share."""
    g = torch.Generator().manual_seed(seed)
    pred = (torch.randn(n, c, generator=g, dtype=torch.float64) *
            scale).to(dtype)
    labels = torch.randint(0, c, (n, ), generator=g)
    labels[torch.rand(n, generator=g) < background] = c
    return pred, labels


def kernel_path(logits, labels, weight, gamma, alpha, epsilon, reduce_sum):
    """The label fast path's kernels through the engine's Function (their
    plain twin runs for a double backward)."""
    options = dict(gamma=gamma, alpha=alpha, epsilon=epsilon,
                   reduce_sum=reduce_sum)
    return GradientInBackward.apply(
        functools.partial(focal._focal_value, **options),
        IncomingGradient(functools.partial(focal._focal_grad, **options)),
        functools.partial(focal._focal_plain, **options), logits, labels,
        weight)


def make_weight(kind, n, c, seed):
    g = torch.Generator().manual_seed(seed + 100)
    if kind == 'none':
        return None
    if kind == 'row':
        return torch.rand(n, generator=g)
    if kind == 'row_column':
        return torch.rand(n, 1, generator=g)
    if kind == 'class':
        return torch.rand(n, c, generator=g)
    return torch.rand(n * c, generator=g)  # flattened per-class weight


def assert_grad_close(grad, ref, what=''):
    """Gradients at rtol 1e-5 relative to the largest entry.

    mmdet's BCE-with-logits evaluates ``log(1 + exp(-|x|))`` without log1p,
    so its float32 gradient of a well-classified entry is off by up to ~1e-4
    relative (``test_more_accurate_than_mmdet`` checks ours against float64).
    With ``avg_factor=0`` every entry is scaled by 1 / eps ~ 8e6, so the
    absolute tolerance must scale too.
    """
    scale = ref.abs().max().clamp(min=1.0)
    assert_close(grad / scale, ref / scale, what=what)


def run_both(ours, theirs, pred, target, **kwargs):
    """Loss value and d loss / d pred of both modules."""
    results = []
    for module in (ours, theirs):
        x = pred.clone().requires_grad_()
        loss = module(x, target, **kwargs)
        loss.sum().backward()
        results.append((loss.detach(), x.grad))
    return results


@pytest.fixture
def mm_focal(mmdet_losses):
    return mmdet_losses.FocalLoss


# ---------------------------------------------------------------------------
# mmdet parity
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('weight_kind', WEIGHT_KINDS)
def test_labels_match_mmdet(mm_focal, seed, weight_kind):
    n, c = 37, 6
    pred, labels = make_inputs(n, c, seed)
    weight = make_weight(weight_kind, n, c, seed)
    ours, theirs = FocalLoss(), mm_focal()
    for reduction, avg_factor in itertools.product(REDUCTIONS,
                                                   (None, 0, 7.5)):
        if reduction == 'sum' and avg_factor is not None:
            continue
        kwargs = dict(weight=weight, avg_factor=avg_factor,
                      reduction_override=reduction)
        (value, grad), (ref, ref_grad) = run_both(ours, theirs, pred, labels,
                                                  **kwargs)
        what = f'{reduction} avg_factor={avg_factor}'
        assert_close(value, ref, what=what)
        assert_grad_close(grad, ref_grad, what=what + ' grad')


@pytest.mark.parametrize('gamma,alpha', [(2.0, 0.25), (0.0, 0.5),
                                         (1.5, 0.75), (3.0, 1.0)])
def test_parameters_and_loss_weight_match_mmdet(mm_focal, gamma, alpha):
    pred, labels = make_inputs(50, 9, seed=3)
    for reduction in REDUCTIONS:
        kwargs = dict(gamma=gamma, alpha=alpha, reduction=reduction,
                      loss_weight=0.7)
        (value, grad), (ref, ref_grad) = run_both(
            FocalLoss(**kwargs), mm_focal(**kwargs), pred, labels)
        assert_close(value, ref, what=reduction)
        assert_grad_close(grad, ref_grad, what=reduction + ' grad')


@pytest.mark.parametrize('seed', [0, 1])
@pytest.mark.parametrize('activated', [False, True])
@pytest.mark.parametrize('soft', [False, True])
def test_dense_targets_match_mmdet(mm_focal, seed, activated, soft):
    """One-hot (int) and soft (float) targets of pred's shape."""
    n, c = 29, 5
    pred, labels = make_inputs(n, c, seed)
    if activated:
        pred = pred.sigmoid()
    if soft:
        g = torch.Generator().manual_seed(seed)
        target = torch.rand(n, c, generator=g)
    else:
        target = F.one_hot(labels, c + 1)[:, :c]
    weight = make_weight('row', n, c, seed)
    ours, theirs = FocalLoss(activated=activated), mm_focal(
        activated=activated)
    for reduction in REDUCTIONS:
        for w in (None, weight):
            (value, grad), (ref, ref_grad) = run_both(
                ours, theirs, pred, target, weight=w,
                reduction_override=reduction)
            assert_close(value, ref, what=reduction)
            assert_grad_close(grad, ref_grad, what=reduction + ' grad')


@pytest.mark.parametrize('seed', [0, 1])
def test_activated_labels_match_mmdet(mm_focal, seed):
    n, c = 40, 7
    pred, labels = make_inputs(n, c, seed)
    prob = pred.sigmoid()
    ours, theirs = FocalLoss(activated=True), mm_focal(activated=True)
    for reduction, weight_kind in itertools.product(REDUCTIONS,
                                                    ('none', 'row', 'class')):
        weight = make_weight(weight_kind, n, c, seed)
        (value, grad), (ref, ref_grad) = run_both(
            ours, theirs, prob, labels, weight=weight,
            avg_factor=3.0 if reduction == 'mean' else None,
            reduction_override=reduction)
        assert_close(value, ref, what=reduction)
        assert_grad_close(grad, ref_grad, what=reduction + ' grad')


def test_retinanet_sized_batch_matches_mmdet(mm_focal):
    """100k anchors x 80 classes, 90% background, per-anchor weight."""
    n, c = 100_000, 80
    pred, labels = make_inputs(n, c, seed=7, background=0.9)
    weight = make_weight('row', n, c, seed=7)
    avg_factor = float((labels < c).sum())
    (value, grad), (ref, ref_grad) = run_both(
        FocalLoss(), mm_focal(), pred, labels, weight=weight,
        avg_factor=avg_factor)
    assert_close(value, ref, what='loss')
    assert_grad_close(grad, ref_grad, what='grad')


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_more_accurate_than_mmdet(mm_focal, seed):
    """Against the float64 result, our float32 gradient is within 2e-5
    relative everywhere; mmdet's is not as close (see assert_grad_close)."""
    pred, labels = make_inputs(37, 6, seed)

    def grad(module, x):
        x = x.clone().requires_grad_()
        module(x, labels, reduction_override='sum').backward()
        return x.grad.double()

    truth = grad(FocalLoss(), pred.double())
    assert_close(grad(mm_focal(), pred.double()), truth, rtol=1e-12,
                 atol=1e-14)
    ours_error = ((grad(FocalLoss(), pred) - truth) / truth).abs().max()
    mmdet_error = ((grad(mm_focal(), pred) - truth) / truth).abs().max()
    assert ours_error < 2e-5 and ours_error < mmdet_error


def test_sum_with_avg_factor_raises_like_mmdet(mm_focal):
    pred, labels = make_inputs(8, 3, seed=0)
    with pytest.raises(ValueError):
        mm_focal()(pred, labels, avg_factor=2.0, reduction_override='sum')
    with pytest.raises(ValueError, match='FocalLoss'):
        FocalLoss()(pred, labels, avg_factor=2.0, reduction_override='sum')


def test_empty_input_mean_is_zero_not_nan(mm_focal):
    """mmdet's 'mean' of an empty loss is 0/0 = NaN; we return a 0 that is
    connected to the graph, so a batch without anchors cannot poison
    training. 'sum', 'none' and avg_factor agree with mmdet."""
    pred = torch.zeros(0, 4, requires_grad=True)
    labels = torch.zeros(0, dtype=torch.long)
    assert torch.isnan(mm_focal()(pred, labels))
    for reduction in REDUCTIONS:
        for avg_factor in (None, 0.0, 5.0):
            if reduction == 'sum' and avg_factor is not None:
                continue
            loss = FocalLoss()(pred, labels, avg_factor=avg_factor,
                               reduction_override=reduction)
            assert loss.shape == ((0, 4) if reduction == 'none' else ())
            assert torch.isfinite(loss).all()
            assert loss.sum().item() == 0
            loss.sum().backward()
            assert pred.grad.shape == (0, 4)


# ---------------------------------------------------------------------------
# the fast path against the plain formula; gradcheck
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('gamma,alpha,epsilon', [(2.0, 0.25, 0.0),
                                                 (1.5, 0.4, 0.0),
                                                 (0.0, 0.25, 0.0),
                                                 (2.0, 0.25, 1.0),
                                                 (0.5, 0.9, -0.7)])
def test_fast_path_matches_plain_formula(gamma, alpha, epsilon):
    n, c = 64, 11
    pred, labels = make_inputs(n, c, seed=5, dtype=torch.float64, scale=4.0)
    weight = make_weight('row', n, c, 5).double().view(-1, 1)
    one_hot = F.one_hot(labels, c + 1)[:, :c]
    x = pred.clone().requires_grad_()
    loss = kernel_path(x, labels, weight, gamma, alpha, epsilon, False)
    loss.sum().backward()
    x_ref = pred.clone().requires_grad_()
    ref = elementwise_focal_loss(x_ref, one_hot, gamma, alpha,
                                 epsilon) * weight
    ref.sum().backward()
    assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('epsilon', [0.0, 1.0])
@pytest.mark.parametrize('weight_kind', ['none', 'row_column', 'class'])
def test_kernels_agree(epsilon, weight_kind):
    """The eager kernel and the element-wise one ``MMLOSS_COMPILE`` compiles
    (run eagerly here: no compile time in the tests) give the same loss and
    gradient, and the gradient is the plain formula's."""
    n, c = 50, 7
    pred, labels = make_inputs(n, c, seed=8, dtype=torch.float64, scale=5.0)
    weight = make_weight(weight_kind, n, c, 8)
    weight = None if weight is None else weight.double()
    results = []
    for kernel in (focal_kernels.sigmoid_focal_kernel,
                   focal_kernels.fused_sigmoid_focal_kernel):
        for reduce_sum in (False, True):
            loss, grad, scale = kernel(pred, labels, weight, 1.5, 0.3,
                                       epsilon, reduce_sum, True)
            results.append((loss, grad * scale))
    x = pred.clone().requires_grad_()
    ref = elementwise_focal_loss(x, F.one_hot(labels, c + 1)[:, :c], 1.5,
                                 0.3, epsilon)
    if weight is not None:
        ref = ref * weight
    ref.sum().backward()
    # F.softplus returns x itself above x = 20 (error < 2e-9)
    for i, (loss, grad) in enumerate(results):
        expected = ref.sum() if i % 2 else ref
        assert_close(loss, expected.detach(), rtol=1e-9, atol=1e-8)
        assert_close(grad, x.grad, rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize('gamma', [2.0, 1.5, 0.0])
@pytest.mark.parametrize('reduce_sum', [False, True])
def test_gradcheck_fast_path(gamma, reduce_sum):
    pred, labels = make_inputs(6, 4, seed=1, dtype=torch.float64)
    weight = make_weight('class', 6, 4, 1).double()
    x = pred.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: kernel_path(x, labels, weight, gamma, 0.25, 0.5,
                              reduce_sum), (x, ))


@pytest.mark.parametrize('kind', ['labels', 'activated', 'soft', 'weight'])
def test_gradcheck_module(kind):
    pred, labels = make_inputs(6, 4, seed=2, dtype=torch.float64)
    weight = None
    if kind == 'activated':
        pred = pred.sigmoid()
    if kind == 'soft':
        labels = torch.rand(6, 4, dtype=torch.float64,
                            generator=torch.Generator().manual_seed(0))
    inputs = [pred.clone().requires_grad_()]
    if kind == 'weight':  # a weight that needs a gradient takes autograd
        weight = torch.rand(6, dtype=torch.float64).requires_grad_()
        inputs.append(weight)
    loss = FocalLoss(activated=kind == 'activated', gamma=1.5)

    def f(x, w=weight):
        return loss(x, labels, weight=w, avg_factor=3.0)

    assert torch.autograd.gradcheck(f, tuple(inputs))


# ---------------------------------------------------------------------------
# hand-computed values
# ---------------------------------------------------------------------------
def test_hand_values():
    # one row, label 0 of 2 classes, logits 0 -> p = 0.5 everywhere:
    # positive 0.25 * 0.5**2 * log 2, negative 0.75 * 0.5**2 * log 2
    pred = torch.zeros(1, 2, requires_grad=True)
    loss = FocalLoss(reduction='none')(pred, torch.tensor([0]))
    log2 = math.log(2)
    assert_close(loss, torch.tensor([[0.0625 * log2, 0.1875 * log2]]))
    loss.sum().backward()
    # d/dx at p = 1/2: positive -0.25 * 0.25 * (2 * 0.5 * log2 + 0.5),
    # negative 0.75 * 0.25 * (2 * 0.5 * log2 + 0.5)
    inner = log2 + 0.5
    assert_close(pred.grad, torch.tensor([[-0.0625 * inner,
                                           0.1875 * inner]]))


def test_poly1_hand_values():
    # p = 0.5, gamma = 2, alpha = 0.25, epsilon = 1:
    # positive 0.25 * 0.25 * log 2 + 0.5**3 = 0.168321...
    # negative 0.75 * 0.25 * log 2 + 0.5**3 = 0.254965...
    pred = torch.zeros(1, 2)
    loss = Poly1FocalLoss(reduction='none')(pred, torch.tensor([0]))
    assert_close(loss, torch.tensor([[0.1683216, 0.2549648]]))
    # p = 0.75 (x = log 3), negative, epsilon = 2, gamma = 1, alpha = 0.5:
    # 0.5 * 0.75 * log 4 + 2 * 0.75**2 = 1.644860...
    pred = torch.tensor([[math.log(3)]])
    loss = poly1_focal_loss(pred, torch.tensor([1]), gamma=1.0, alpha=0.5,
                            epsilon=2.0, reduction='sum')
    assert_close(loss, torch.tensor(1.6448604))


def test_poly1_with_zero_epsilon_is_focal(mm_focal):
    pred, labels = make_inputs(30, 5, seed=4)
    weight = make_weight('row', 30, 5, 4)
    ours = Poly1FocalLoss(epsilon=0.0)(pred, labels, weight, avg_factor=4)
    ref = mm_focal()(pred, labels, weight, avg_factor=4)
    assert_close(ours, ref)


@pytest.mark.parametrize('activated', [False, True])
def test_poly1_paths_agree(activated):
    """Labels (fast / autograd path) against the one-hot plain formula."""
    pred, labels = make_inputs(40, 6, seed=6, dtype=torch.float64)
    if activated:
        pred = pred.sigmoid()
    one_hot = F.one_hot(labels, 7)[:, :6]
    module = Poly1FocalLoss(epsilon=0.8, activated=activated)
    (value, grad), (ref, ref_grad) = run_both(module, module, pred, labels)
    x = pred.clone().requires_grad_()
    dense = module(x, one_hot)
    dense.backward()
    assert_close(value, dense.detach(), rtol=1e-10, atol=1e-12)
    assert_close(grad, x.grad, rtol=1e-10, atol=1e-12)
    x = pred.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: module(x, labels), (x, ))


# ---------------------------------------------------------------------------
# hardening
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('module', [FocalLoss(), Poly1FocalLoss()])
def test_all_background_and_zero_weights(module, mm_focal):
    pred, _ = make_inputs(20, 4, seed=0)
    background = torch.full((20, ), 4)
    x = pred.clone().requires_grad_()
    loss = module(x, background, weight=torch.zeros(20))
    loss.backward()
    assert loss.item() == 0 and torch.count_nonzero(x.grad) == 0
    if type(module) is FocalLoss:  # Poly1FocalLoss has no mmdet twin
        (value, grad), (ref, ref_grad) = run_both(module, mm_focal(), pred,
                                                  background)
        assert_close(value, ref)
        assert_close(grad, ref_grad)


@pytest.mark.parametrize('module', [FocalLoss(), Poly1FocalLoss()])
def test_extreme_logits(module):
    """Logits of +-100: finite loss and gradient, and the exact limits."""
    pred = torch.tensor([[100., -100.], [-100., 100.]], requires_grad=True)
    labels = torch.tensor([0, 2])  # row 0: class 0 positive; row 1: bg
    loss = module(pred, labels, reduction_override='none')
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(pred.grad).all()
    # confident and right -> 0; negative at +100 -> 0.75 * 100 (+ eps * 1)
    poly = 1.0 if isinstance(module, Poly1FocalLoss) else 0.0
    assert_close(loss, torch.tensor([[0., 0.], [0., 75. + poly]]))
    assert_close(pred.grad, torch.tensor([[0., 0.], [0., 0.75]]))
    # confident and wrong positive: alpha * 100 (+ eps), gradient -alpha
    pred = torch.tensor([[-100.]], requires_grad=True)
    loss = module(pred, torch.tensor([0]))
    loss.backward()
    assert_close(loss, torch.tensor(25. + poly))
    assert_close(pred.grad, torch.tensor([[-0.25]]))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('path', ['labels', 'soft', 'activated'])
def test_half_precision(dtype, path):
    pred, labels = make_inputs(50, 8, seed=0)
    module = FocalLoss(activated=path == 'activated')
    if path == 'activated':
        pred = pred.sigmoid()
    target = labels if path != 'soft' else F.one_hot(labels, 9)[:, :8] * 0.7
    ref = module(pred, target)
    x = pred.to(dtype).requires_grad_()
    loss = module(x, target)
    loss.backward()
    # a reduced loss of half inputs is float32 (mmloss.precision)
    assert loss.dtype == torch.float32 and x.grad.dtype == dtype
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert_close(loss.float(), ref, rtol=3e-2, atol=1e-3)
    # a large sum does not overflow half: summed and returned in float32
    if path == 'labels':
        big = torch.full((200, 80), 10.0, dtype=dtype)
        total = FocalLoss(reduction='sum')(big, torch.full((200, ), 80))
        assert total.dtype == torch.float32
        assert_close(total, torch.tensor(0.75 * 10 * 16000), rtol=1e-2,
                     atol=0)
        assert_close(FocalLoss()(big, torch.full((200, ), 80)).float(),
                     torch.tensor(7.5, dtype=torch.float32), rtol=1e-2,
                     atol=0)


@pytest.mark.parametrize('reduction', REDUCTIONS)
def test_nan_propagates(reduction):
    pred, labels = make_inputs(10, 3, seed=0)
    pred[2, 1] = float('nan')
    loss = FocalLoss(reduction=reduction)(pred, labels)
    if reduction == 'none':
        assert torch.isnan(loss[2, 1]) and torch.isfinite(
            loss[torch.arange(10) != 2]).all()
    else:
        assert torch.isnan(loss)


def test_invalid_inputs():
    pred, labels = make_inputs(10, 3, seed=0)
    loss = FocalLoss()
    with pytest.raises(TypeError, match='FocalLoss.*target'):
        loss(pred, labels.float())
    with pytest.raises(ValueError, match=r'FocalLoss.*\[0, 3\]'):
        loss(pred, torch.full((10, ), 4))
    with pytest.raises(ValueError, match='FocalLoss'):
        loss(pred, torch.full((10, ), -1))
    with pytest.raises(ValueError, match=r'FocalLoss: pred has shape'):
        loss(pred, torch.zeros(10, 4))
    with pytest.raises(ValueError, match='FocalLoss'):
        loss(pred, labels[:9])
    with pytest.raises(ValueError, match='FocalLoss.*weight'):
        loss(pred, labels, weight=torch.ones(7))
    with pytest.raises(ValueError, match='FocalLoss.*reduction_override'):
        loss(pred, labels, reduction_override='avg')
    with pytest.raises(TypeError, match='FocalLoss'):
        loss(pred.long(), labels)
    with pytest.raises(TypeError, match='Poly1FocalLoss'):
        Poly1FocalLoss()(pred, labels.float())
    with pytest.raises(ValueError, match='sigmoid_focal_loss'):
        sigmoid_focal_loss(pred, labels, reduction='avg')


@pytest.mark.parametrize('cls', [FocalLoss, Poly1FocalLoss])
@pytest.mark.parametrize('kwargs,argument', [
    (dict(use_sigmoid=False), 'use_sigmoid'),
    (dict(alpha=1.5), 'alpha'),
    (dict(alpha=-0.1), 'alpha'),
    (dict(gamma=-1.0), 'gamma'),
    (dict(gamma='2'), 'gamma'),
    (dict(loss_weight=-1.0), 'loss_weight'),
])
def test_bad_constructor_arguments(cls, kwargs, argument):
    with pytest.raises(ValueError, match=f'{cls.__name__}.*{argument}'):
        cls(**kwargs)


@pytest.mark.parametrize('cls', [FocalLoss, Poly1FocalLoss])
def test_unknown_reduction_builds_and_the_call_raises(cls):
    loss = cls(reduction='avg')  # as in MMDetection: checked at the call
    with pytest.raises(ValueError, match=f'{cls.__name__}.*reduction'):
        loss(torch.randn(3, 4), torch.tensor([0, 1, 4]))


def test_bad_epsilon():
    with pytest.raises(ValueError, match='Poly1FocalLoss.*epsilon'):
        Poly1FocalLoss(epsilon=float('nan'))


# ---------------------------------------------------------------------------
# registry, attributes heads read, the compile switch
# ---------------------------------------------------------------------------
def test_built_from_config():
    from mmdet.registry import MODELS as MMDET_MODELS
    loss = MMDET_MODELS.build(dict(type='mmloss.FocalLoss', gamma=1.0,
                                   loss_weight=2.0))
    assert isinstance(loss, FocalLoss) and loss.use_sigmoid is True
    assert loss.gamma == 1.0 and loss.loss_weight == 2.0
    poly = MODELS.build(dict(type='Poly1FocalLoss', epsilon=0.5))
    assert isinstance(poly, Poly1FocalLoss) and poly.use_sigmoid is True


def test_no_gradient_work_without_grad():
    """Under no_grad the kernel skips the gradient (nothing is saved)."""
    pred, labels = make_inputs(10, 3, seed=0)
    with torch.no_grad():
        value = FocalLoss()(pred.requires_grad_(), labels)
    assert value.grad_fn is None
    assert_close(value, FocalLoss()(pred.detach(), labels))


def test_compile_fallback(monkeypatch):
    """MMLOSS_COMPILE=1 with a failing compiler warns once and falls back to
    the eager kernel with identical results (no real compile here)."""
    pred, labels = make_inputs(12, 3, seed=0)
    eager = FocalLoss()(pred, labels)

    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError('no compiler')
        return run

    monkeypatch.setenv(dispatch.COMPILE_ENV, '1')
    monkeypatch.setattr(torch, 'compile', broken_compile)
    monkeypatch.setattr(focal_kernels, '_compiled_kernel', None)
    monkeypatch.setattr(focal_kernels, '_compile_failed', False)
    assert dispatch.compile_enabled()
    with pytest.warns(UserWarning, match='eager'):
        first = FocalLoss()(pred, labels)
    assert focal_kernels._compile_failed
    assert torch.equal(first, eager)
    assert torch.equal(FocalLoss()(pred, labels), eager)


# ---------------------------------------------------------------------------
# the engine: exact double backward, dispatch, autocast
# ---------------------------------------------------------------------------
def graph_functions(out):
    """Names of the custom autograd Functions in ``out``'s graph."""
    seen, stack, found = set(), [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            found.add(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


#: The engine's autograd Functions (as their backward nodes are named).
ENGINE_FUNCTIONS = ('GradientInForwardBackward', 'GradientInBackwardBackward',
                    'GradientFromOutputBackward')


def engine_ran(out):
    """Whether one of the engine's Functions is in ``out``'s graph."""
    return any(name in ENGINE_FUNCTIONS for name in graph_functions(out))


def value_grad_hvp(loss_fn, inputs, fast=True, expect_engine=None, seed=0):
    """Value, gradient with ``create_graph=True`` (which must carry a
    graph) and the Hessian-vector product ``grad((g * v).sum())`` of
    ``loss_fn(*inputs)``, for every input; detached.

    ``expect_engine`` (True/False) asserts whether the engine's Function
    ran."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    gen = torch.Generator().manual_seed(seed)
    with mmloss.fast_paths(fast):
        out = loss_fn(*leaves)
        if expect_engine is not None:
            assert engine_ran(out) == expect_engine, graph_functions(out)
        upstream = torch.rand(out.shape, generator=gen,
                              dtype=torch.float64).to(out) + 0.5
        grads = torch.autograd.grad(out, leaves, upstream,
                                    create_graph=True)
        assert all(g.requires_grad for g in grads), \
            'a create_graph gradient without a graph'
        directions = [torch.rand(x.shape, generator=gen,
                                 dtype=torch.float64).to(x) for x in leaves]
        product = sum((g * d).sum() for g, d in zip(grads, directions))
        hvps = torch.autograd.grad(product, leaves, allow_unused=True)
    hvps = [torch.zeros_like(x) if h is None else h
            for h, x in zip(hvps, leaves)]
    return [out.detach()] + [g.detach() for g in grads] + list(hvps)


def assert_second_order(candidate, reference, rtol=1e-9, atol=1e-11,
                        what=''):
    """Value, gradients and Hessian-vector products agree (relative to
    each result's largest entry)."""
    assert len(candidate) == len(reference)
    for i, (got, want) in enumerate(zip(candidate, reference)):
        scale = want.abs().max().item() if want.numel() else 1.0
        assert_close(got, want, rtol=rtol, atol=atol * max(scale, 1.0),
                     what=f'{what} result {i}')


@pytest.mark.parametrize('cls', [FocalLoss, Poly1FocalLoss])
@pytest.mark.parametrize('reduction,weight_kind,avg_factor', [
    ('mean', 'none', None), ('mean', 'row', 7.5), ('sum', 'class', None),
    ('none', 'row_column', None), ('mean', 'class', 0)])
def test_double_backward_equals_the_plain_formula(cls, reduction,
                                                  weight_kind, avg_factor):
    """create_graph=True gives a gradient with a graph, and its derivative
    (a Hessian-vector product) equals the plain formula's."""
    pred, labels = make_inputs(23, 5, seed=4, dtype=torch.float64,
                               scale=3.0)
    weight = make_weight(weight_kind, 23, 5, 4)
    weight = None if weight is None else weight.double()
    module = cls(gamma=1.5, reduction=reduction)

    def loss(x):
        return module(x, labels, weight=weight, avg_factor=avg_factor)

    fast = value_grad_hvp(loss, [pred], expect_engine=True)
    plain = value_grad_hvp(loss, [pred], fast=False, expect_engine=False)
    assert_second_order(fast, plain)


@pytest.mark.parametrize('gamma', [2.0, 1.5, 0.0])
def test_gradgradcheck(gamma):
    pred, labels = make_inputs(6, 4, seed=1, dtype=torch.float64)
    weight = make_weight('class', 6, 4, 1).double()
    x = pred.clone().requires_grad_()
    for epsilon in (0.0, 0.5):
        for reduce_sum in (False, True):
            assert torch.autograd.gradgradcheck(
                lambda x: kernel_path(x, labels, weight, gamma, 0.25,
                                      epsilon, reduce_sum), (x, ))
    assert torch.autograd.gradgradcheck(
        lambda x: Poly1FocalLoss(gamma=gamma)(x, labels, avg_factor=2.0),
        (x, ))
    # a weight that needs a gradient: second derivatives in both
    w = torch.rand(6, 4, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradgradcheck(
        lambda x, w: FocalLoss(gamma=gamma)(x, labels, weight=w), (x, w))


@pytest.mark.parametrize('path', ['labels', 'one_hot', 'activated'])
def test_second_derivatives_match_mmdet(mm_focal, path):
    """mmdet's CPU focal loss is plain autograd: its Hessian-vector
    products are the reference for every path."""
    pred, labels = make_inputs(19, 4, seed=9, dtype=torch.float64)
    target = labels if path == 'labels' else \
        F.one_hot(labels, 5)[:, :4]
    activated = path == 'activated'
    if activated:
        pred = pred.sigmoid()
    weight = make_weight('row', 19, 4, 9).double()
    ours, theirs = FocalLoss(activated=activated), mm_focal(
        activated=activated)
    results = [value_grad_hvp(
        lambda x: module(x, target, weight=weight, avg_factor=3.0), [pred])
        for module in (ours, theirs)]
    assert_second_order(*results, rtol=1e-9)


def test_a_gradient_penalty_is_not_silently_zero():
    """The penalty |dL/dx|^2 has a non-zero gradient (a once-differentiable
    Function gave it none) equal to the plain formula's."""
    pred, labels = make_inputs(30, 6, seed=2, dtype=torch.float64)
    grads = []
    for fast in (True, False):
        x = pred.clone().requires_grad_()
        with mmloss.fast_paths(fast):
            g, = torch.autograd.grad(FocalLoss()(x, labels), x,
                                     create_graph=True)
            penalty = g.pow(2).sum()
            penalty.backward()
        grads.append(x.grad)
    assert grads[0].abs().max() > 0
    assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-14)


def test_switch_and_fast_keyword_pick_the_path():
    pred, labels = make_inputs(12, 3, seed=0)
    x = pred.clone().requires_grad_()
    assert engine_ran(FocalLoss()(x, labels))
    with mmloss.fast_paths(False):
        assert not graph_functions(FocalLoss()(x, labels))
        assert not graph_functions(Poly1FocalLoss()(x, labels))


@pytest.mark.parametrize('n', [16, 3000])
@pytest.mark.parametrize('cls,activated', [(FocalLoss, False),
                                           (Poly1FocalLoss, False),
                                           (FocalLoss, True)])
def test_autocast_gives_the_float32_result(n, cls, activated):
    """Under bfloat16 autocast the loss computes in float32 as outside it:
    same value and gradient (and a dense target too)."""
    pred, labels = make_inputs(n, 7, seed=3)
    if activated:
        pred = pred.sigmoid()
    weight = make_weight('row', n, 7, 3)
    module = cls(activated=activated)
    for target in (labels, F.one_hot(labels, 8)[:, :7].float() * 0.9):
        results = []
        for autocast in (False, True):
            x = pred.clone().requires_grad_()
            with torch.autocast('cpu', dtype=torch.bfloat16,
                                enabled=autocast):
                out = module(x, target, weight=weight, avg_factor=n / 3)
            out.backward()
            assert out.dtype == torch.float32
            results.append((out.detach(), x.grad))
        assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-7)
        assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-9)


def test_half_gradient_scaled_before_it_is_cast():
    """The kernel's gradient stays float32 until scaled: a half input with
    a large weight and avg_factor gets the plain formula's finite
    gradient."""
    pred, labels = make_inputs(40, 5, seed=5)
    weight = torch.full((40, ), 3e5)
    results = []
    for fast in (True, False):
        x = pred.half().requires_grad_()
        with mmloss.fast_paths(fast):
            FocalLoss()(x, labels, weight=weight, avg_factor=4e5).backward()
        results.append(x.grad.float())
    assert torch.isfinite(results[0]).all()
    assert_close(results[0], results[1], rtol=1e-3, atol=1e-4)


def test_errors_name_the_function_and_the_shapes():
    pred, labels = make_inputs(10, 3, seed=0)
    with pytest.raises(ValueError, match=r'poly1_focal_loss: pred has shape '
                       r'\(10, 3\) but target has shape \(10, 4\)'):
        poly1_focal_loss(pred, torch.zeros(10, 4))
    with pytest.raises(ValueError, match=r'sigmoid_focal_loss: weight has '
                       r'shape \(3,\).*\(4, 5, 2\)'):
        sigmoid_focal_loss(torch.zeros(4, 5, 2), torch.zeros(4, 5, 2),
                           weight=torch.ones(3))
    with pytest.raises(ValueError, match='sigmoid_focal_loss: avg_factor'):
        sigmoid_focal_loss(pred, labels, reduction='sum', avg_factor=2.0)


# ---------------------------------------------------------------------------
# gradient in backward: what the graph keeps, blocks, one exponential
# ---------------------------------------------------------------------------
def saved_bytes(loss_fn, *inputs):
    """Bytes of the distinct storages ``loss_fn(*inputs)``'s graph keeps for
    backward (``saved_tensors_hooks``: what ``save_for_backward`` and the
    built-in ops save), with the storages of the inputs that are among
    them."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn(*inputs)
    kept = {x.untyped_storage().data_ptr() for x in inputs
            if isinstance(x, torch.Tensor)} & set(storages)
    return sum(storages.values()), kept


def small_blocks(monkeypatch):
    """Make the classification kernels' row blocks tiny (several blocks on
    test-sized inputs): the table's block rows become 1, so a block holds
    ``entries_per_block_row // C`` rows or at least one."""
    for kind, entry in list(dispatch.TUNING.items()):
        monkeypatch.setitem(dispatch.TUNING, kind,
                            dataclasses.replace(entry, block_rows=1))


def test_the_graph_keeps_the_logits_and_labels_only():
    """The fast path saves the caller's logits and labels (references) and
    one flag per row block: no N x C tensor of its own (mmdet keeps
    eight)."""
    pred, labels = make_inputs(3000, 80, seed=9)
    x = pred.clone().requires_grad_()
    total, kept = saved_bytes(FocalLoss(), x, labels)
    assert kept == {x.untyped_storage().data_ptr(),
                    labels.untyped_storage().data_ptr()}
    assert total <= x.numel() * 4 + labels.numel() * 8 + 64


@pytest.mark.parametrize('kind', ['cpu', 'cuda'])
@pytest.mark.parametrize('reduction', ['mean', 'none'])
def test_blocks_and_overflowing_exponentials(monkeypatch, kind, reduction):
    """Several row blocks, one of them with logits whose exponential
    overflows float32 (100): that block is computed stably in forward and
    in backward (a summed block finds out from its NaN sum, an element-wise
    one from its largest logit), the others from one exponential; value
    and gradient equal the plain formula's, and the CUDA table's branch
    (no host reads) gives the same."""
    small_blocks(monkeypatch)
    pred, labels = make_inputs(40, 8, seed=12, scale=3.0)
    pred[5, 3] = 100.0
    pred[6, 0] = 30.0
    results = []
    for fast in (True, False):
        x = pred.clone().requires_grad_()
        with mmloss.fast_paths(fast), dispatch.pretend_device(kind):
            out = FocalLoss(gamma=1.5, reduction=reduction)(x, labels)
            assert engine_ran(out) == fast
        out.sum().backward()
        results.append((out.detach(), x.grad))
    assert len(focal_kernels.row_blocks(pred)) > 1
    assert torch.isfinite(results[0][1]).all()
    assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-7)
    assert_grad_close(results[0][1], results[1][1])


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_sigmoid_and_softplus_from_one_exponential(dtype):
    """sigmoid = e / (1 + e) and softplus = log1p(e) of one e = exp(x)
    equal torch.sigmoid and F.softplus to rounding below the threshold
    (torch.sigmoid flushes float32 subnormals to 0); the stable pair is
    torch's own."""
    x = torch.linspace(-90, 20, 20001, dtype=dtype)
    prob, softplus = focal_kernels.sigmoid_and_softplus(x, True)
    tol = dict(rtol=4e-7, atol=1e-37) if dtype == torch.float32 else \
        dict(rtol=1e-15, atol=0)
    assert_close(prob, torch.sigmoid(x), **tol)
    assert_close(softplus, F.softplus(x), **tol)
    prob, softplus = focal_kernels.sigmoid_and_softplus(x * 5, False)
    assert torch.equal(prob, torch.sigmoid(x * 5))
    assert torch.equal(softplus, F.softplus(x * 5))
    assert focal_kernels.one_exponential_fits(x)
    assert not focal_kernels.one_exponential_fits(x + 1)
    with dispatch.pretend_device('cuda'):
        assert not focal_kernels.one_exponential_fits(x)


def test_backward_follows_forward_block_by_block(monkeypatch):
    """Backward takes each block the way forward did (one flag per block
    saved), so a retained graph's second backward and a fresh call agree
    with the plain formula; Poly-1 included."""
    small_blocks(monkeypatch)
    pred, labels = make_inputs(24, 8, seed=13, scale=4.0)
    pred[20, 1] = 95.0
    for cls in (FocalLoss, Poly1FocalLoss):
        x = pred.clone().requires_grad_()
        out = cls(gamma=2.0)(x, labels)
        first, = torch.autograd.grad(out, x, retain_graph=True)
        second, = torch.autograd.grad(out, x)
        with mmloss.fast_paths(False):
            ref, = torch.autograd.grad(cls(gamma=2.0)(x, labels), x)
        assert torch.equal(first, second)
        assert_grad_close(first, ref)


# ---------------------------------------------------------------------------
# issue 14: saturated probabilities with activated=True, module errors
# ---------------------------------------------------------------------------
def saturated_probabilities():
    """Probabilities of exactly 1 and 0: float32 ``torch.sigmoid`` returns
    them at logits of 20 and -120 (TOOD's configs use ``activated=True``),
    with labels (N,) in [0, 3] (3: background)."""
    prob = torch.sigmoid(torch.tensor([[20., -120., .5], [-120., 20., -1.],
                                       [20., 20., -120.], [.3, -120., 20.]]))
    assert prob.max() == 1 and prob.min() == 0
    return prob, torch.tensor([1, 1, 3, 2])


@pytest.mark.parametrize('target_kind', ['labels', 'one_hot'])
@pytest.mark.parametrize('reduction', REDUCTIONS)
def test_activated_saturated_probabilities_match_mmdet(
        mmdet_losses, target_kind, reduction):
    """p = 0 or 1 with activated=True: the loss and its gradient are
    mmdet's (finite: binary_cross_entropy clamps log at -100 and its
    gradient's denominator at 1e-12), not NaN (was: 0 * inf in backward)."""
    prob, labels = saturated_probabilities()
    target = labels if target_kind == 'labels' else \
        F.one_hot(labels, 4)[:, :3].float()
    (loss, grad), (ref_loss, ref_grad) = outputs_and_grads(
        (FocalLoss(activated=True, reduction=reduction),
         mmdet_losses.FocalLoss(activated=True, reduction=reduction)),
        prob, target)
    assert torch.isfinite(grad).all() and torch.isfinite(ref_grad).all()
    assert grad.abs().max() > 1e10  # the saturated entries' huge slope
    assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('target_kind', ['labels', 'one_hot'])
def test_activated_poly1_saturated_probabilities_are_finite(target_kind):
    """Poly-1 at p = 0 or 1: the focal gradient plus the polynomial term's
    ``eps (g + 1) pt'**g * d pt'/dp``, finite everywhere."""
    prob, labels = saturated_probabilities()
    one_hot = F.one_hot(labels, 4)[:, :3].float()
    target = labels if target_kind == 'labels' else one_hot
    gamma, epsilon = 2.0, 1.0
    grads = []
    for module in (Poly1FocalLoss(activated=True, epsilon=epsilon),
                   FocalLoss(activated=True)):
        x = prob.clone().requires_grad_()
        module(x, target).backward()
        grads.append(x.grad)
    poly, plain = grads
    assert torch.isfinite(poly).all()
    away = torch.where(one_hot == 1, 1 - prob, prob)
    slope = torch.where(one_hot == 1, -1.0, 1.0)
    expected = plain + epsilon * (gamma + 1) * away**gamma * slope / \
        prob.numel()
    assert_close(poly, expected, rtol=1e-5, atol=1e-6)


def test_activated_interior_second_derivatives():
    """The activated label form (now through binary_cross_entropy) is
    still twice differentiable away from 0 and 1."""
    prob = torch.rand(5, 3, generator=torch.Generator().manual_seed(3),
                      dtype=torch.float64) * 0.9 + 0.05
    labels = torch.tensor([0, 3, 2, 1, 3])
    x = prob.requires_grad_()
    assert torch.autograd.gradgradcheck(
        lambda x: Poly1FocalLoss(activated=True, gamma=1.5)(x, labels),
        (x, ))


@pytest.mark.parametrize('cls', [FocalLoss, Poly1FocalLoss])
def test_unknown_forward_keyword_names_the_loss(cls):
    """Poly1FocalLoss inherits FocalLoss.forward: an unknown keyword
    names the class called, not ``FocalLoss.forward``."""
    pred, labels = make_inputs(4, 3, seed=0)
    with pytest.raises(TypeError,
                       match=rf"^{cls.__name__}: unexpected keyword "
                       r"arguments \['gama'\]"):
        cls()(pred, labels, gama=2.0)
    with pytest.raises(TypeError, match=cls.__name__):
        cls(gama=2.0)
