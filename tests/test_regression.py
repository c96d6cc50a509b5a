"""L1, smooth L1, balanced L1 and MSE against MMDetection 3.3, by hand and
under stress."""
import math

import pytest
import torch

import mmloss
from mmloss.engine import dispatch
from mmloss.losses.regression import (BalancedL1Loss, L1Loss, MSELoss,
                                      SmoothL1Loss, balanced_l1_loss,
                                      l1_loss, mse_loss, smooth_l1_loss)
from tests.helpers import assert_close
from tests.test_gradients import (MATMUL_FAMILY, OpRecorder,
                                  assert_same_derivatives, custom_functions,
                                  derivatives)

# (name, constructor arguments, our pure function with them)
CASES = [
    ('L1Loss', {}),
    ('SmoothL1Loss', dict(beta=1.0)),
    ('SmoothL1Loss', dict(beta=0.25)),
    ('BalancedL1Loss', {}),
    ('BalancedL1Loss', dict(alpha=0.3, gamma=1.0, beta=0.6)),
    ('MSELoss', {}),
]
IDS = [f'{name}{kwargs}' for name, kwargs in CASES]
OURS = dict(L1Loss=L1Loss, SmoothL1Loss=SmoothL1Loss,
            BalancedL1Loss=BalancedL1Loss, MSELoss=MSELoss)
FUNCTIONS = dict(L1Loss=l1_loss, SmoothL1Loss=smooth_l1_loss,
                 BalancedL1Loss=balanced_l1_loss, MSELoss=mse_loss)


def deltas(seed, n=300, scale=0.7):
    """Predicted and target deltas (n, 4), and a weight in [0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, 4, generator=gen) * scale
    target = torch.randn(n, 4, generator=gen) * scale
    weight = torch.rand(n, 4, generator=gen)
    weight[weight < 0.2] = 0
    return pred, target, weight


def loss_and_grad(module, pred, target, *args, **kwargs):
    pred = pred.detach().clone().requires_grad_()
    loss = module(pred, target, *args, **kwargs)
    loss.sum().backward()
    return loss.detach(), pred.grad


def scaled_atol(expected):
    # element-wise results: mmdet's balanced L1 subtracts two ~alpha * x
    # terms (cancellation ~1e-7 * max), so compare on the tensor's scale
    return max(1e-6 * float(expected.abs().max()), 1e-12) \
        if expected.numel() else 1e-6


def assert_same_step(ours, theirs, pred, target, *args, what='', **kwargs):
    value, grad = loss_and_grad(ours, pred, target, *args, **kwargs)
    ref_value, ref_grad = loss_and_grad(theirs, pred, target, *args, **kwargs)
    assert_close(value, ref_value, atol=scaled_atol(ref_value),
                 what=f'{what} value')
    assert_close(grad, ref_grad, atol=scaled_atol(ref_grad),
                 what=f'{what} grad')
    return value, grad


# --------------------------------------------------------------------------
# Parity
# --------------------------------------------------------------------------
@pytest.mark.parametrize('name,kwargs', CASES, ids=IDS)
@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('kind', ['cpu', 'cuda'])
def test_matches_mmdet(mmdet_losses, name, kwargs, seed, kind):
    # 'cuda': the table entry without size thresholds (the kernels)
    pred, target, weight = deltas(seed)
    with dispatch.pretend_device(kind):
        _matches_mmdet(mmdet_losses, name, kwargs, pred, target, weight)


def _matches_mmdet(mmdet_losses, name, kwargs, pred, target, weight):
    for reduction in ('mean', 'sum', 'none'):
        ours = OURS[name](reduction=reduction, loss_weight=1.5, **kwargs)
        theirs = getattr(mmdet_losses, name)(reduction=reduction,
                                             loss_weight=1.5, **kwargs)
        for w in (None, weight, weight[:, :1], weight[0]):
            avg_factors = [None] if reduction == 'sum' else \
                [None, 0, 37.5, torch.tensor(12.0)]
            for avg_factor in avg_factors:
                assert_same_step(ours, theirs, pred, target, w,
                                 avg_factor=avg_factor,
                                 what=f'{reduction} {avg_factor}')
        for override in ('none', 'mean', 'sum'):
            assert_same_step(ours, theirs, pred, target, weight,
                             reduction_override=override,
                             what=f'{reduction}->{override}')


@pytest.mark.parametrize('name,kwargs', CASES, ids=IDS)
def test_large_matches_mmdet(mmdet_losses, name, kwargs):
    pred, target, weight = deltas(7, n=200_000, scale=1.0)
    ours, theirs = OURS[name](**kwargs), getattr(mmdet_losses,
                                                 name)(**kwargs)
    assert_same_step(ours, theirs, pred, target, what='unweighted')
    assert_same_step(ours, theirs, pred, target, weight, avg_factor=5e4,
                     what='weighted')


@pytest.mark.parametrize('name,kwargs', CASES, ids=IDS)
@pytest.mark.parametrize('reduction', ['none', 'mean', 'sum'])
def test_fast_matches_plain(name, kwargs, reduction):
    pred, target, weight = deltas(3)
    function = FUNCTIONS[name]
    for w in (None, weight, weight[:, 1:2]):
        results = []
        for fast in (True, False):
            x = pred.clone().requires_grad_()
            t = target.clone().requires_grad_()
            loss = function(x, t, w, reduction=reduction, fast=fast,
                            **kwargs)
            loss.sum().backward()
            results.append((loss.detach(), x.grad, t.grad))
        for got, expected in zip(*results):
            assert_close(got, expected, atol=scaled_atol(expected))


@pytest.mark.parametrize('name,kwargs', CASES, ids=IDS)
@pytest.mark.parametrize('reduction', ['none', 'mean', 'sum'])
def test_gradcheck(name, kwargs, reduction):
    pred, target, weight = deltas(4, n=6, scale=1.5)
    pred = pred.double().requires_grad_()
    target = target.double().requires_grad_()
    weight = weight.double()
    avg_factor = 3.0 if reduction == 'mean' else None
    assert torch.autograd.gradcheck(
        lambda x, t: FUNCTIONS[name](x, t, weight, reduction=reduction,
                                     avg_factor=avg_factor, **kwargs),
        (pred, target))


@pytest.mark.parametrize('name,kwargs', CASES, ids=IDS)
def test_non_contiguous_inputs(mmdet_losses, name, kwargs):
    pred, target, weight = deltas(13, n=50)
    pred, target, weight = (t.t().contiguous().t()
                            for t in (pred, target, weight))
    assert not pred.is_contiguous()
    for reduction in ('mean', 'none'):
        assert_same_step(OURS[name](reduction=reduction, **kwargs),
                         getattr(mmdet_losses, name)(reduction=reduction,
                                                     **kwargs),
                         pred, target, weight, what=reduction)


def test_weight_with_grad_gets_its_gradient():
    # the fast path does not differentiate weights: the plain one steps in
    pred, target, weight = deltas(5, n=20)
    weight.requires_grad_()
    smooth_l1_loss(pred, target, weight).backward()
    expected = smooth_l1_loss(pred, target, reduction='none') / pred.numel()
    assert_close(weight.grad, expected)


# --------------------------------------------------------------------------
# By hand
# --------------------------------------------------------------------------
def test_values_by_hand():
    pred = torch.tensor([0.0, 0.5, 3.0])
    target = torch.zeros(3)
    assert_close(l1_loss(pred, target, reduction='sum'), torch.tensor(3.5))
    assert_close(mse_loss(pred, target, reduction='sum'), torch.tensor(9.25))
    # beta = 1: 0, 0.5 * 0.25, 3 - 0.5
    assert_close(smooth_l1_loss(pred, target, reduction='none'),
                 torch.tensor([0.0, 0.125, 2.5]))
    # alpha = 0.5, gamma = 1.5, beta = 1: b = e^3 - 1
    b = math.e ** 3 - 1
    inlier = 0.5 / b * (b * 0.5 + 1) * math.log(b * 0.5 + 1) - 0.25
    outlier = 1.5 * 3 + 1.5 / b - 0.5
    assert_close(balanced_l1_loss(pred, target, reduction='none'),
                 torch.tensor([0.0, inlier, outlier]))
    # avg_factor: sum / (avg_factor + eps)
    assert_close(l1_loss(pred, target, avg_factor=2.0), torch.tensor(1.75))


def test_balanced_l1_is_continuous_and_slope_matches_formula():
    b = math.e ** 3 - 1
    x = torch.tensor([1.0 - 1e-6, 1.0], dtype=torch.float64,
                     requires_grad=True)
    loss = balanced_l1_loss(x, torch.zeros(2, dtype=torch.float64),
                            reduction='none')
    assert_close(loss[0], loss[1], atol=1e-5)
    loss.sum().backward()
    # alpha * ln(b x + 1) inside, gamma outside: equal at x = beta = 1
    assert_close(x.grad, torch.tensor([0.5 * math.log(b + 1), 1.5],
                                      dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize('beta', [0.0, 1e-6])
def test_smooth_l1_small_beta_is_l1(beta):
    # fvcore's rule; mmdet asserts beta > 0 and for beta = 1e-6 differs from
    # L1 by at most beta / 2 per element
    pred, target, weight = deltas(6)
    assert_same_step(SmoothL1Loss(beta=beta), L1Loss(), pred, target, weight)


# --------------------------------------------------------------------------
# Hardening
# --------------------------------------------------------------------------
@pytest.mark.parametrize('name,kwargs', CASES, ids=IDS)
@pytest.mark.parametrize('reduction', ['none', 'mean', 'sum'])
def test_empty_input(name, kwargs, reduction):
    # mmdet's MSE gives NaN for an empty mean; ours is 0 and backward works
    pred = torch.zeros(0, 4, requires_grad=True)
    for avg_factor in ([None] if reduction == 'sum' else [None, 0.0]):
        loss = OURS[name](reduction=reduction, **kwargs)(
            pred, torch.zeros(0, 4), torch.zeros(0, 4),
            avg_factor=avg_factor)
        assert torch.isfinite(loss).all()
        loss.sum().backward()
        assert pred.grad.shape == pred.shape


@pytest.mark.parametrize('name,kwargs', CASES, ids=IDS)
def test_all_zero_weight(mmdet_losses, name, kwargs):
    pred, target, _ = deltas(8)
    zero = torch.zeros_like(pred)
    for reduction in ('mean', 'sum'):
        value, grad = assert_same_step(
            OURS[name](reduction=reduction, **kwargs),
            getattr(mmdet_losses, name)(reduction=reduction, **kwargs),
            pred, target, zero, what=reduction)
        assert value == 0 and torch.equal(grad, zero)
    # 'none': element-wise zeros (mmdet's L1/SmoothL1 return a scalar 0)
    value, grad = loss_and_grad(OURS[name](reduction='none', **kwargs), pred,
                                target, zero)
    assert torch.equal(value, zero) and torch.equal(grad, zero)


@pytest.mark.parametrize('name,kwargs', CASES, ids=IDS)
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_inputs(name, kwargs, dtype):
    pred, target, weight = deltas(9, scale=20.0)
    pred, target = pred.to(dtype), target.to(dtype)
    reference = OURS[name](**kwargs)(pred.float(), target.float(), weight)
    x = pred.clone().requires_grad_()
    loss = OURS[name](**kwargs)(x, target, weight.to(dtype))
    loss.backward()
    # a reduced loss of half inputs is float32 (mmloss.precision)
    assert loss.dtype == torch.float32 and x.grad.dtype == dtype
    assert torch.isfinite(loss) and torch.isfinite(x.grad.float()).all()
    assert_close(loss.float(), reference, rtol=1e-2, atol=1e-3)


def test_mse_fp16_large_errors_stay_finite(mmdet_losses):
    # errors of 300: 300^2 = 90000 overflows fp16 (max 65504) in mmdet;
    # ours computes in float32 and returns a reduced loss in float32
    pred = torch.full((10, 4), 300.0, dtype=torch.float16, requires_grad=True)
    target = torch.zeros(10, 4, dtype=torch.float16)
    theirs = mmdet_losses.MSELoss()(pred, target, avg_factor=900.0)
    assert not torch.isfinite(theirs)
    loss = MSELoss()(pred, target, avg_factor=900.0)
    assert loss.dtype == torch.float32
    assert_close(loss, torch.tensor(4000.0), rtol=1e-3)
    loss.backward()
    assert torch.isfinite(pred.grad.float()).all()
    # the plain mean (90000) does not fit fp16 either: float32, not inf
    assert_close(MSELoss()(pred, target), torch.tensor(90000.0))
    # the element-wise loss keeps fp16, where 90000 is not representable
    none = MSELoss(reduction='none')(pred, target)
    assert none.dtype == torch.float16 and torch.isinf(none).all()


@pytest.mark.parametrize('name,kwargs', CASES, ids=IDS)
def test_nan_propagates(mmdet_losses, name, kwargs):
    # the loss is NaN; the gradient of the NaN element is what torch's own
    # autograd gives mmdet (NaN, or 0 where the slope is sign(d): sign(NaN)
    # is 0 in torch), and every other element's gradient stays finite
    pred, target, weight = deltas(10, n=20)
    pred[2, 1] = float('nan')
    for reduction in ('mean', 'none'):
        value, grad = loss_and_grad(
            OURS[name](reduction=reduction, **kwargs), pred, target, weight)
        _, ref_grad = loss_and_grad(
            getattr(mmdet_losses, name)(reduction=reduction, **kwargs), pred,
            target, weight)
        assert torch.isnan(value).any()
        assert torch.equal(torch.isnan(grad), torch.isnan(ref_grad))
        finite = ~torch.isnan(ref_grad)
        assert_close(grad[finite], ref_grad[finite])


@pytest.mark.parametrize('cls,kwargs', [
    (SmoothL1Loss, dict(beta=-0.1)), (SmoothL1Loss, dict(beta='1')),
    (BalancedL1Loss, dict(alpha=0)), (BalancedL1Loss, dict(gamma=-1.0)),
    (BalancedL1Loss, dict(beta=0)), (BalancedL1Loss, dict(alpha=1e-3,
                                                          gamma=1e3)),
    (L1Loss, dict(loss_weight=-1.0)),
])
def test_bad_arguments(cls, kwargs):
    if 'loss_weight' in kwargs:  # never checked by mmdet: refused when built
        with pytest.raises(ValueError, match=cls.__name__):
            cls(**kwargs)
        return
    # built, as by MMDetection, which refuses them at the call
    loss = cls(**kwargs)
    with pytest.raises(ValueError, match=cls.__name__):
        loss(torch.rand(3, 4), torch.rand(3, 4))


def test_unknown_reduction_builds_and_the_call_raises():
    # as in MMDetection, which checks the reduction only when called
    loss = MSELoss(reduction='avg')
    with pytest.raises(ValueError, match='MSELoss'):
        loss(torch.rand(3, 4), torch.rand(3, 4))


@pytest.mark.parametrize('name,kwargs', CASES, ids=IDS)
def test_bad_inputs(name, kwargs):
    pred, target, weight = deltas(11, n=10)
    module = OURS[name](**kwargs)
    with pytest.raises(ValueError, match=name):
        module(pred, target[:, :3])
    with pytest.raises(ValueError, match=name):
        module(pred, target, weight[:5])
    with pytest.raises(ValueError, match=name):
        module(pred, target, reduction_override='sum', avg_factor=2.0)
    with pytest.raises(ValueError, match=name):
        module(pred, target, reduction_override='max')
    with pytest.raises(TypeError, match=name):
        module(pred.long(), target.long())
    with pytest.raises(TypeError, match=name):
        module(pred, target.tolist())


@pytest.mark.parametrize('cls', [SmoothL1Loss, BalancedL1Loss])
def test_unknown_keyword_raises(cls):
    pred, target, _ = deltas(12, n=4)
    with pytest.raises(TypeError, match=cls.__name__):
        cls()(pred, target, gamma=2.0)


def test_builds_from_registry():
    from mmloss.registry import MODELS
    module = MODELS.build(dict(type='mmloss.SmoothL1Loss', beta=0.11,
                               loss_weight=2.0))
    assert isinstance(module, SmoothL1Loss) and module.beta == 0.11


# --------------------------------------------------------------------------
# The engine: double backward, dispatch, autocast, no matrix products
# --------------------------------------------------------------------------
def _function_call(name, kwargs, weight, reduction, avg_factor, fast):
    def call(pred, target):
        return FUNCTIONS[name](pred, target, weight, reduction=reduction,
                               avg_factor=avg_factor, fast=fast, **kwargs)
    return call


@pytest.mark.parametrize('name,kwargs', CASES, ids=IDS)
@pytest.mark.parametrize('reduction', ['none', 'mean', 'sum'])
@pytest.mark.parametrize('weighted', [False, True])
def test_double_backward_equals_the_plain_formula(name, kwargs, reduction,
                                                  weighted):
    pred, target, weight = (t.double() for t in deltas(21, n=40))
    weight = weight if weighted else None
    avg_factor = 17.0 if reduction == 'mean' and weighted else None
    fast = derivatives(_function_call(name, kwargs, weight, reduction,
                                      avg_factor, True), (pred, target))
    plain = derivatives(_function_call(name, kwargs, weight, reduction,
                                       avg_factor, False), (pred, target))
    with mmloss.fast_paths(False):
        switched = derivatives(_function_call(name, kwargs, weight,
                                              reduction, avg_factor, None),
                               (pred, target))
    assert_same_derivatives(fast, plain, what=f'{name} {reduction}')
    assert_same_derivatives(switched, plain, what=f'{name} switched off')


@pytest.mark.parametrize('name,kwargs', CASES, ids=IDS)
@pytest.mark.parametrize('reduction', ['none', 'mean'])
def test_double_backward_matches_mmdet(mmdet_losses, name, kwargs,
                                       reduction):
    pred, target, weight = (t.double() for t in deltas(22, n=50))
    theirs = getattr(mmdet_losses, name)(reduction=reduction, **kwargs)
    ours = OURS[name](reduction=reduction, **kwargs)
    expected = derivatives(lambda p, t: theirs(p, t, weight), (pred, target))
    for fast in (True, False):
        with mmloss.fast_paths(fast):
            got = derivatives(lambda p, t: FUNCTIONS[name](
                p, t, weight, reduction=reduction, fast=fast, **kwargs),
                (pred, target))
        assert_same_derivatives(got, expected, what=f'{name} fast={fast}')
    got = derivatives(lambda p, t: ours(p, t, weight), (pred, target))
    assert_same_derivatives(got, expected, what=f'{name} module')


@pytest.mark.parametrize('name,kwargs', CASES, ids=IDS)
@pytest.mark.parametrize('reduction', ['none', 'mean', 'sum'])
def test_gradgradcheck(name, kwargs, reduction):
    pred, target, weight = deltas(23, n=5, scale=1.5)
    pred = pred.double().requires_grad_()
    target = target.double().requires_grad_()
    weight = weight.double()
    avg_factor = 3.0 if reduction == 'mean' else None
    assert torch.autograd.gradgradcheck(
        _function_call(name, kwargs, weight, reduction, avg_factor, True),
        (pred, target))


def _takes_kernel(name, kwargs, n, weighted=False, **call):
    pred, target, weight = deltas(24, n=n)
    if weighted:
        call['weight'] = weight
    out = FUNCTIONS[name](pred.requires_grad_(), target, **kwargs, **call)
    return 'GradientInBackwardBackward' in custom_functions(out)


def _plain_unweighted(name, kind='cpu'):
    """Whether the table sends ``name``'s unweighted calls to the plain
    formula on ``kind``."""
    return name in dispatch.TUNING[kind].plain_unweighted


@pytest.mark.parametrize('name,kwargs', CASES, ids=IDS)
def test_the_dispatcher_decides_the_path(name, kwargs):
    threshold = dispatch.TUNING['cpu'].min_rows.get(name, 0)
    # an unweighted call of a loss in plain_unweighted never takes the
    # kernel on the CPU: the size rule is seen on weighted calls
    weighted = _plain_unweighted(name)
    if threshold > 1:
        assert not _takes_kernel(name, kwargs, threshold - 1, weighted)
        # fast=True skips the size threshold
        assert _takes_kernel(name, kwargs, threshold - 1, weighted,
                             fast=True)
    assert _takes_kernel(name, kwargs, max(threshold, 1), weighted)
    assert not _takes_kernel(name, kwargs, max(threshold, 1), weighted,
                             fast=False)
    with mmloss.fast_paths(False):
        assert not _takes_kernel(name, kwargs, max(threshold, 1), weighted)
        assert not _takes_kernel(name, kwargs, 4, weighted, fast=True)
    # off the CPU (the 'cuda' entry of the table, forced on CPU tensors)
    with dispatch.pretend_device('cuda'):
        cuda_threshold = dispatch.TUNING['cuda'].min_rows.get(name, 0)
        assert _takes_kernel(name, kwargs, max(cuda_threshold, 16))


@pytest.mark.parametrize('name,kwargs', CASES, ids=IDS)
def test_unweighted_calls_follow_the_plain_unweighted_entry(name, kwargs):
    """Where the table lists the loss, an unweighted call above the size
    threshold takes the plain formula (torch's own loss), a weighted or
    avg_factor call the kernel; elsewhere both take the kernel."""
    for kind in ('cpu', 'cuda'):
        threshold = max(dispatch.TUNING[kind].min_rows.get(name, 0), 16)
        with dispatch.pretend_device(kind):
            plain = _plain_unweighted(name, kind)
            assert _takes_kernel(name, kwargs, threshold) is not plain
            assert _takes_kernel(name, kwargs, threshold, True)
            assert _takes_kernel(name, kwargs, threshold, avg_factor=3.0)
            # 'none' too: the plain element-wise loss, nothing to fuse
            assert _takes_kernel(name, kwargs, threshold,
                                 reduction='none') is not plain


@pytest.mark.parametrize('name,kwargs', CASES, ids=IDS)
@pytest.mark.parametrize('reduction', ['none', 'mean', 'sum'])
def test_cuda_table_entry_equals_the_plain_formula(name, kwargs, reduction):
    pred, target, weight = deltas(25, n=64)
    call = _function_call(name, kwargs, weight, reduction, None, None)
    with dispatch.pretend_device('cuda'):
        got = derivatives(call, (pred, target))
    with mmloss.fast_paths(False):
        expected = derivatives(call, (pred, target))
    assert_same_derivatives(got, expected, rtol=1e-5, atol=1e-6,
                            what=f'{name} {reduction}')


@pytest.mark.parametrize('name,kwargs', CASES, ids=IDS)
@pytest.mark.parametrize('n', [16, 5000])
@pytest.mark.parametrize('fast', [None, True, False])
def test_autocast_equals_float32(name, kwargs, n, fast):
    pred, target, weight = deltas(26, n=n, scale=3.0)

    def step(autocast):
        x = pred.clone().requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            loss = FUNCTIONS[name](x, target, weight, fast=fast, **kwargs)
        loss.backward()
        return loss.detach(), x.grad

    (value, grad), (ref_value, ref_grad) = step(True), step(False)
    assert value.dtype == torch.float32
    assert_close(value, ref_value, rtol=1e-4, atol=0)
    assert_close(grad, ref_grad, rtol=1e-4, atol=1e-4 * float(
        ref_grad.abs().max()))


@pytest.mark.parametrize('name,kwargs', CASES, ids=IDS)
def test_no_matrix_product_touches_pred_or_grad(name, kwargs):
    pred, target, weight = deltas(27, n=40)
    for fast in (True, False):
        for w, reduction in ((None, 'mean'), (weight, 'mean'),
                             (weight[:, :1], 'sum'), (weight, 'none')):
            x = pred.clone().requires_grad_()
            with OpRecorder() as recorder:
                FUNCTIONS[name](x, target, w, reduction=reduction, fast=fast,
                                **kwargs).sum().backward()
            assert not recorder.ops & MATMUL_FAMILY, recorder.ops


@pytest.mark.parametrize('name,kwargs', CASES, ids=IDS)
def test_input_errors_name_the_loss_and_shapes(name, kwargs):
    pred, target, weight = deltas(28, n=10)
    function = FUNCTIONS[name]
    with pytest.raises(ValueError, match=rf'{name}: pred has shape \(10, 4\) '
                       r'but target has shape \(10, 3\)'):
        function(pred, target[:, :3], **kwargs)
    with pytest.raises(ValueError,
                       match=rf'{name}: weight has shape \(5, 4\)'):
        function(pred, target, weight[:5], **kwargs)
    with pytest.raises(TypeError, match=rf'{name}: pred must be a float'):
        function(pred.long(), target, **kwargs)
    with pytest.raises(TypeError, match=rf'{name}: target must be a torch'):
        function(pred, target.tolist(), **kwargs)
    with pytest.raises(ValueError, match=rf'{name}: reduction must be one'):
        function(pred, target, reduction='max', **kwargs)
    with pytest.raises(ValueError, match=rf'{name}: avg_factor can not'):
        function(pred, target, reduction='sum', avg_factor=2.0, **kwargs)


def test_target_gradient_alone():
    # only the target asks for a gradient: it gets minus the slope
    pred, target, _ = deltas(29, n=30)
    for name, kwargs in CASES:
        grads = []
        for fast in (True, False):
            t = target.clone().requires_grad_()
            FUNCTIONS[name](pred, t, fast=fast, **kwargs).backward()
            grads.append(t.grad)
        assert_close(grads[0], grads[1], what=name)


@pytest.mark.parametrize('name,kwargs', CASES, ids=IDS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
@pytest.mark.parametrize('weighted,reduction', [(False, 'mean'),
                                                (True, 'mean'),
                                                (True, 'none')])
def test_the_graph_keeps_only_the_difference(name, kwargs, dtype, weighted,
                                             reduction):
    # like mmdet's graph, the kernel's keeps one tensor of pred's size (the
    # difference, in the compute dtype), not the slope and the inputs too
    pred, target, weight = deltas(30, n=500)
    pred, target = pred.to(dtype), target.to(dtype)
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = (storage.nbytes(), tensor.numel())
        return tensor

    x = pred.requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = FUNCTIONS[name](x, target, weight if weighted else None,
                               reduction=reduction, fast=True, **kwargs)
    assert 'GradientInBackwardBackward' in custom_functions(loss)
    big = [numel for _, numel in storages.values() if numel > 1]
    assert big == [pred.numel()], storages
    nbytes = [n for n, numel in storages.values() if numel > 1]
    assert nbytes == [pred.numel() * 4]  # float32 at least
    # and the kernel's backward still gives the plain formula's gradient
    loss.sum().backward()
    expected = pred.detach().clone().requires_grad_()
    FUNCTIONS[name](expected, target, weight if weighted else None,
                    reduction=reduction, fast=False,
                    **kwargs).sum().backward()
    assert_close(x.grad.float(), expected.grad.float(), rtol=1e-3,
                 atol=1e-3)


@pytest.mark.parametrize('name,kwargs', CASES, ids=IDS)
def test_the_gradient_never_overwrites_a_caller_tensor(name, kwargs):
    # the slope is written over the difference only when the graph is
    # freed; inputs stay intact, and a retained graph gives the same
    # gradient twice
    pred, target, weight = deltas(31, n=64)
    x = pred.clone().requires_grad_()
    t = target.clone().requires_grad_()
    loss = FUNCTIONS[name](x, t, weight, fast=True, **kwargs)
    first = torch.autograd.grad(loss, (x, t), retain_graph=True)
    second = torch.autograd.grad(loss, (x, t))
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert torch.equal(x.detach(), pred) and torch.equal(t.detach(), target)
    assert_close(first[1], -first[0])


@pytest.mark.parametrize('name', ['L1Loss', 'SmoothL1Loss', 'BalancedL1Loss',
                                  'MSELoss'])
def test_fused_weighted_sum_is_as_accurate_as_mmdet_on_many_equal_terms(
        name):
    """A million nearly equal terms (an untrained box head): the kernel's
    fused weighted sum keeps mmdet's accuracy (a pairwise sum; BLAS's dot
    product would drift by ~1e-6 relative) against a float64 reference."""
    import mmdet.models.losses as mmdet_losses
    gen = torch.Generator().manual_seed(0)
    pred = 0.5 + 1e-3 * torch.randn(250000, 4, generator=gen)
    target = torch.zeros(250000, 4)
    weight = torch.rand(250000, 4, generator=gen)
    ours = getattr(mmloss, name)()(pred, target, weight, avg_factor=7.0)
    theirs = getattr(mmdet_losses, name)()(pred, target, weight,
                                           avg_factor=7.0)
    reference = getattr(mmdet_losses, name)()(
        pred.double(), target.double(), weight.double(), avg_factor=7.0)
    error = abs(float(ours) - float(reference)) / float(reference)
    assert error <= max(2e-7, 2 * abs(float(theirs) - float(reference))
                        / float(reference))
