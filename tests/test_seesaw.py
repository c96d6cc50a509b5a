"""SeesawLoss against MMDetection 3.3, including its running class counts."""
import math

import pytest
import torch

import mmloss
from mmloss.reduction import FLOAT32_EPS
from mmloss.losses.seesaw import seesaw_ce_loss, seesaw_log_weights
from tests.helpers import assert_close
from tests.test_focal import (assert_second_order, graph_functions,
                              value_grad_hvp)

REDUCTIONS = ('none', 'mean', 'sum')
NUM_CLASSES = 12


def batch(generator, n=64, num_classes=NUM_CLASSES, fg=0.6):
    score = torch.randn(n, num_classes + 2, generator=generator) * 3
    fg_mask = torch.rand(n, generator=generator) < fg
    labels = torch.where(
        fg_mask,
        torch.randint(0, num_classes, (n,), generator=generator),
        num_classes)
    return score, labels, torch.rand(n, generator=generator)


def total(out):
    if isinstance(out, dict):
        return sum((v * torch.linspace(-1, 1, v.numel()).reshape(
            v.shape)).sum() for v in out.values())
    return (out * torch.linspace(-1, 1, out.numel()).reshape(
        out.shape)).sum()


def compare_step(ref, ours, score, *args, grad_atol=1e-6, **kwargs):
    xa = score.clone().requires_grad_()
    xb = score.clone().requires_grad_()
    a, b = ref(xa, *args, **kwargs), ours(xb, *args, **kwargs)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key].shape == a[key].shape, key
            assert_close(b[key], a[key], what=key)
    else:
        assert_close(b, a, what='loss')
    total(a).backward()
    total(b).backward()
    assert_close(xb.grad, xa.grad, atol=grad_atol, what='grad')
    # exact int64 counts; mmdet's float32 ones are exact below 2^24
    assert ours.cum_samples.dtype == torch.int64
    assert torch.equal(ours.cum_samples.float(), ref.cum_samples), \
        'cum_samples'


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('reduction', REDUCTIONS)
def test_parity_over_steps(mmdet_losses, seed, reduction):
    g = torch.Generator().manual_seed(seed)
    for return_dict in (True, False):
        if reduction == 'none' and not return_dict:
            continue  # MMDetection adds (M,) and (N,) tensors: it fails
        kwargs = dict(num_classes=NUM_CLASSES, reduction=reduction,
                      return_dict=return_dict, loss_weight=1.3)
        ref = mmdet_losses.SeesawLoss(**kwargs)
        ours = mmloss.SeesawLoss(**kwargs)
        for _ in range(4):
            score, labels, weight = batch(g)
            compare_step(ref, ours, score, labels)
            compare_step(ref, ours, score, labels, weight)
            if reduction == 'mean':
                compare_step(ref, ours, score, labels, weight,
                             avg_factor=20.0)
                # avg_factor=0 divides by the float32 eps: gradients are
                # ~1e7 and their float32 rounding scales with them
                compare_step(ref, ours, score, labels, weight, avg_factor=0,
                             grad_atol=1e-6 / FLOAT32_EPS)
            for override in REDUCTIONS:
                if override == 'none' and not return_dict:
                    continue
                compare_step(ref, ours, score, labels, weight,
                             reduction_override=override)


@pytest.mark.parametrize('p,q', [(0.8, 2.0), (0.0, 2.0), (0.8, 0.0),
                                 (0.0, 0.0), (1.5, 0.5)])
def test_parity_exponents(mmdet_losses, p, q):
    g = torch.Generator().manual_seed(3)
    ref = mmdet_losses.SeesawLoss(num_classes=NUM_CLASSES, p=p, q=q,
                                  eps=0.05)
    ours = mmloss.SeesawLoss(num_classes=NUM_CLASSES, p=p, q=q, eps=0.05)
    for _ in range(3):
        compare_step(ref, ours, *batch(g))


def test_parity_realistic_lvis(mmdet_losses):
    g = torch.Generator().manual_seed(4)
    ref = mmdet_losses.SeesawLoss()
    ours = mmloss.SeesawLoss()
    for _ in range(2):
        score, labels, weight = batch(g, n=1024, num_classes=1203, fg=0.25)
        compare_step(ref, ours, score, labels, weight)


def test_cum_samples_buffer_and_checkpoint(mmdet_losses):
    ours = mmloss.SeesawLoss(num_classes=NUM_CLASSES)
    ref = mmdet_losses.SeesawLoss(num_classes=NUM_CLASSES)
    assert 'cum_samples' in dict(ours.named_buffers())
    assert set(ours.state_dict()) == set(ref.state_dict()) == {'cum_samples'}
    ours(*batch(torch.Generator().manual_seed(5))[:2])
    labels = torch.tensor([0, 0, 3, NUM_CLASSES, NUM_CLASSES, 5])
    before = ours.cum_samples.clone()
    ours(torch.randn(6, NUM_CLASSES + 2), labels)
    expected = before.clone()
    expected[0] += 2
    expected[3] += 1
    expected[5] += 1
    expected[NUM_CLASSES] += 2
    assert torch.equal(ours.cum_samples, expected)
    # our checkpoint loads into MMDetection's module and back
    ref.load_state_dict(ours.state_dict())
    assert torch.equal(ref.cum_samples, ours.cum_samples)
    fresh = mmloss.SeesawLoss(num_classes=NUM_CLASSES)
    fresh.load_state_dict(ref.state_dict())
    assert torch.equal(fresh.cum_samples, expected)


def test_head_interface(mmdet_losses):
    g = torch.Generator().manual_seed(6)
    ref = mmdet_losses.SeesawLoss(num_classes=NUM_CLASSES)
    ours = mmloss.SeesawLoss(num_classes=NUM_CLASSES)
    for attr in ('custom_cls_channels', 'custom_activation',
                 'custom_accuracy'):
        assert getattr(ours, attr) is True
    assert ours.use_sigmoid is False
    assert ours.get_cls_channels(NUM_CLASSES) == NUM_CLASSES + 2
    score, labels, _ = batch(g)
    assert_close(ours.get_activation(score), ref.get_activation(score))
    acc, acc_ref = ours.get_accuracy(score, labels), \
        ref.get_accuracy(score, labels)
    assert acc.keys() == acc_ref.keys()
    for key in acc:
        assert_close(acc[key], acc_ref[key], what=key)
    with pytest.raises(ValueError, match='SeesawLoss'):
        ours.get_cls_channels(NUM_CLASSES + 1)


def test_log_weights_match_formula():
    """log S against the paper's factors, computed by hand."""
    g = torch.Generator().manual_seed(7)
    score = torch.randn(5, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 1])
    counts = torch.tensor([10.0, 1.0, 0.0, 40.0], dtype=torch.float64)
    p, q, eps = 0.8, 2.0, 0.01
    log_w = seesaw_log_weights(score, labels, counts, p, q, eps)
    probs = score.softmax(1)
    for i, label in enumerate(labels.tolist()):
        for j in range(4):
            n_j, n_l = max(counts[j].item(), 1), max(counts[label].item(), 1)
            mitigation = min(1.0, n_j / n_l) ** p
            compensation = max(1.0, probs[i, j].item() / max(
                probs[i, label].item(), eps)) ** q
            assert log_w[i, j].item() == pytest.approx(
                math.log(mitigation * compensation),
                rel=1e-9, abs=1e-12)


def test_fast_matches_plain_and_gradcheck():
    g = torch.Generator().manual_seed(8)
    score = torch.randn(9, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 6, (9,), generator=g)
    counts = torch.tensor([5.0, 0.0, 30.0, 2.0, 9.0, 1.0],
                          dtype=torch.float64)
    weight = torch.rand(9, generator=g, dtype=torch.float64)
    for reduction in REDUCTIONS:
        results = []
        for fast in (True, False):
            x = score.clone().requires_grad_()
            out = seesaw_ce_loss(x, labels, weight, counts, 6, 0.8, 2.0,
                                 0.01, reduction, fast=fast)
            out.sum().backward()
            results.append((out.detach(), x.grad))
        assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)
        assert_close(results[0][1], results[1][1], rtol=1e-12, atol=1e-12)
    # the compensation factor is computed from the detached scores (no
    # gradient by design), so finite differences only match with q = 0
    x = score.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: seesaw_ce_loss(t, labels, weight, counts, 6, 0.8, 0.0,
                                 0.01, 'sum'), (x,))


# ------------------------------------------------------------- hardening
@pytest.mark.parametrize('reduction', REDUCTIONS)
def test_empty_input(reduction):
    loss = mmloss.SeesawLoss(num_classes=NUM_CLASSES, reduction=reduction)
    score = torch.zeros(0, NUM_CLASSES + 2, requires_grad=True)
    out = loss(score, torch.zeros(0, dtype=torch.long))
    for value in out.values():
        assert torch.isfinite(value).all()
    sum(v.sum() for v in out.values()).backward()
    assert score.grad is not None


def test_background_only_and_zero_weight(mmdet_losses):
    score = torch.randn(8, NUM_CLASSES + 2)
    labels = torch.full((8,), NUM_CLASSES)
    ref = mmdet_losses.SeesawLoss(num_classes=NUM_CLASSES)
    ours = mmloss.SeesawLoss(num_classes=NUM_CLASSES)
    compare_step(ref, ours, score, labels)
    out = ours(score, torch.zeros(8, dtype=torch.long), torch.zeros(8))
    assert all(v.item() == 0 for v in out.values())


def test_extreme_logits(mmdet_losses):
    g = torch.Generator().manual_seed(9)
    score, labels, _ = batch(g, n=16)
    score = torch.sign(score) * 100
    ref = mmdet_losses.SeesawLoss(num_classes=NUM_CLASSES)
    ours = mmloss.SeesawLoss(num_classes=NUM_CLASSES)
    compare_step(ref, ours, score, labels)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    g = torch.Generator().manual_seed(10)
    score, labels, _ = batch(g, n=256)
    x = score.to(dtype).requires_grad_()
    out = mmloss.SeesawLoss(num_classes=NUM_CLASSES, return_dict=False)(
        x, labels)
    # a reduced loss of half inputs is float32 (as under autocast)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    out.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    expected = mmloss.SeesawLoss(num_classes=NUM_CLASSES, return_dict=False)(
        score.to(dtype).float(), labels)
    assert_close(out.float(), expected, rtol=1e-2, atol=1e-3)


def test_nan_propagates():
    score = torch.randn(4, NUM_CLASSES + 2)
    score[0, 1] = float('nan')
    out = mmloss.SeesawLoss(num_classes=NUM_CLASSES, return_dict=False)(
        score, torch.tensor([0, 1, 2, 3]))
    assert torch.isnan(out)


def test_invalid_inputs():
    loss = mmloss.SeesawLoss(num_classes=NUM_CLASSES)
    score = torch.randn(4, NUM_CLASSES + 2)
    with pytest.raises(TypeError, match='SeesawLoss'):
        loss(score, torch.zeros(4))
    with pytest.raises(ValueError, match='SeesawLoss'):
        loss(score, torch.tensor([0, 1, NUM_CLASSES + 1, 2]))
    with pytest.raises(ValueError, match='SeesawLoss'):
        loss(score, torch.tensor([0, 1, -1, 2]))
    with pytest.raises(ValueError, match='SeesawLoss'):
        loss(torch.randn(4, NUM_CLASSES), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match='SeesawLoss'):
        loss(score, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match='SeesawLoss'):
        loss(score, torch.zeros(4, dtype=torch.long), torch.ones(3))
    with pytest.raises(ValueError, match='SeesawLoss'):
        loss(score, torch.zeros(4, dtype=torch.long),
             reduction_override='max')
    with pytest.raises(ValueError, match='SeesawLoss'):
        loss(score, torch.zeros(4, dtype=torch.long),
             reduction_override='sum', avg_factor=3.0)
    assert torch.equal(loss.cum_samples, torch.zeros(NUM_CLASSES + 1)), \
        'a rejected call must not count its labels'
    for kwargs in (dict(use_sigmoid=True), dict(num_classes=0),
                   dict(p=-1.0), dict(q=-0.5), dict(eps=0.0),
                   dict(loss_weight=-1.0)):
        with pytest.raises(ValueError, match='SeesawLoss'):
            mmloss.SeesawLoss(**kwargs)
    # an unknown reduction builds, as in MMDetection, and the call raises
    built = mmloss.SeesawLoss(num_classes=NUM_CLASSES, reduction='avg')
    with pytest.raises(ValueError, match='SeesawLoss'):
        built(score, torch.zeros(4, dtype=torch.long))


# ------------------------------------------ the engine: double backward
def _class_inputs(n=10, c=6, seed=50):
    g = torch.Generator().manual_seed(seed)
    score = torch.randn(n, c, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, c, (n,), generator=g)
    counts = torch.tensor([5.0, 0.0, 30.0, 2.0, 9.0, 1.0],
                          dtype=torch.float64)[:c]
    weight = torch.rand(n, generator=g, dtype=torch.float64)
    return score, labels, counts, weight


@pytest.mark.parametrize('reduction', REDUCTIONS)
def test_double_backward_equals_the_plain_formula(reduction):
    """The compensation factor reads the *detached* scores (the paper's and
    MMDetection's choice), in the fast path (log space) and in the plain
    formula (ratios) alike: with create_graph=True both give the same
    gradient, with a graph, and the same Hessian-vector product (that of
    the detached formula)."""
    score, labels, counts, weight = _class_inputs()

    def fn(x):
        return seesaw_ce_loss(x, labels, weight, counts, 6, 0.8, 2.0, 0.01,
                              reduction, avg_factor=None)

    fast = value_grad_hvp(fn, [score])
    plain = value_grad_hvp(fn, [score], fast=False, expect_engine=False)
    assert_second_order(fast, plain)
    x = score.clone().requires_grad_()
    assert not graph_functions(seesaw_ce_loss(
        x, labels, weight, counts, 6, 0.8, 2.0, 0.01, fast=False))


def test_second_derivatives_match_mmdet(mmdet_losses):
    """The module (both terms, running counts) against MMDetection's, which
    detaches the compensation the same way."""
    g = torch.Generator().manual_seed(51)
    score, labels, weight = batch(g, n=24)
    score = score.double()
    results = []
    for module in (mmloss.SeesawLoss(num_classes=NUM_CLASSES,
                                     return_dict=False),
                   mmdet_losses.SeesawLoss(num_classes=NUM_CLASSES,
                                           return_dict=False)):
        module.double()
        module(score, labels)  # one step of counts first
        results.append(value_grad_hvp(
            lambda x: module(x, labels, weight.double(), avg_factor=7.0),
            [score]))
    assert_second_order(*results)


def test_gradgradcheck():
    """Finite differences see the detached compensation as a function of
    the scores, so the check runs without it (q = 0); with it, the
    test above compares against the plain formula's same detach."""
    score, labels, counts, weight = _class_inputs(6, 4)
    x = score.clone().requires_grad_()
    assert torch.autograd.gradgradcheck(
        lambda t: seesaw_ce_loss(t, labels, weight, counts, 4, 0.8, 0.0,
                                 0.01, 'sum'), (x,))
    assert torch.autograd.gradgradcheck(
        lambda t: seesaw_ce_loss(t, labels, None, counts, 4, 1.5, 0.0,
                                 0.01, 'none'), (x,))


@pytest.mark.parametrize('n', [16, 3000])
def test_autocast_gives_the_float32_result(n):
    g = torch.Generator().manual_seed(52)
    score, labels, weight = batch(g, n=n)
    results = []
    for autocast in (False, True):
        loss = mmloss.SeesawLoss(num_classes=NUM_CLASSES, return_dict=False)
        x = score.clone().requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            out = loss(x, labels, weight)
        out.backward()
        assert out.dtype == torch.float32
        results.append((out.detach(), x.grad))
    assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-7)
    assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-9)


def test_function_errors_name_the_function_and_the_shapes():
    score, labels, counts, weight = _class_inputs()
    with pytest.raises(ValueError, match=r'seesaw_ce_loss: cls_score has '
                       r'shape \(10, 6\), labels \(9,\)'):
        seesaw_ce_loss(score, labels[:9], None, counts, 6, 0.8, 2.0, 0.01)
    with pytest.raises(ValueError, match=r'seesaw_ce_loss: label_weights has '
                       r'shape \(3,\)'):
        seesaw_ce_loss(score, labels, weight[:3], counts, 6, 0.8, 2.0, 0.01)
    with pytest.raises(ValueError, match=r'seesaw_ce_loss: labels holds 6'):
        seesaw_ce_loss(score, torch.full((10, ), 6), None, counts, 6, 0.8,
                       2.0, 0.01)


# ------------------------------------- the class counts, dtypes, errors
def test_counts_keep_growing_past_float32_and_float16_range(mmdet_losses):
    # float32 counts gain nothing from +1 past 2^24 (a float16 one past
    # 2048); ours are int64, exact after .half() too
    labels = torch.tensor([0, 0, 0, 1, NUM_CLASSES, 2])
    score = torch.randn(6, NUM_CLASSES + 2)
    for start, dtype in ((2 ** 24, torch.float32), (2048, torch.float16)):
        module = mmloss.SeesawLoss(num_classes=NUM_CLASSES).to(dtype)
        module.cum_samples.fill_(start)
        for step in range(1, 4):
            module(score.to(dtype), labels)
            assert module.cum_samples.dtype == torch.int64
            assert module.cum_samples[0] == start + 3 * step
            assert module.cum_samples[1] == start + step
            assert module.cum_samples[3] == start


def test_parity_with_mmdet_near_float32_range(mmdet_losses):
    # mmdet adds per-batch totals to float32 counts past 2^24 (rounded to
    # even there); ours are exact: the counts agree to float32's rounding
    # and the losses (which read count ratios) to rtol 1e-5
    g = torch.Generator().manual_seed(60)
    ref = mmdet_losses.SeesawLoss(num_classes=NUM_CLASSES)
    ours = mmloss.SeesawLoss(num_classes=NUM_CLASSES)
    big = (2 ** 24 - 5 + torch.arange(NUM_CLASSES + 1) * 2 ** 20).float()
    ref.cum_samples.copy_(big)
    ours.load_state_dict(ref.state_dict())
    assert torch.equal(ours.cum_samples.float(), ref.cum_samples)
    for step in range(1, 5):
        score, labels, weight = batch(g)
        out, expected = ours(score, labels, weight), ref(score, labels,
                                                          weight)
        for key in expected:
            assert_close(out[key], expected[key], what=key)
        # mmdet rounds each addition to float32's spacing there (2 or 4)
        assert ((ours.cum_samples - ref.cum_samples.long()).abs() <=
                2 * step).all()
    # ours are the exact totals (the 4 batches have 64 labels each)
    assert (ours.cum_samples - big.long()).sum() == 4 * 64


def test_counts_stay_int64_and_float_checkpoints_load(mmdet_losses):
    module = mmloss.SeesawLoss(num_classes=NUM_CLASSES)
    for cast in (module.half, module.double, module.float,
                 lambda: module.to(torch.bfloat16)):
        cast()
        assert module.cum_samples.dtype == torch.int64
    ref = mmdet_losses.SeesawLoss(num_classes=NUM_CLASSES)
    ref.cum_samples.copy_(torch.arange(NUM_CLASSES + 1.0) * 1000 + 7)
    for state in (ref.state_dict(),
                  {'cum_samples': ref.cum_samples.half()}):
        for assign in (False, True):
            fresh = mmloss.SeesawLoss(num_classes=NUM_CLASSES)
            fresh.load_state_dict(state, assign=assign)
            assert fresh.cum_samples.dtype == torch.int64
            assert torch.equal(fresh.cum_samples,
                               state['cum_samples'].float().round().long())
    # and ours loads into mmdet's float32 buffer
    ref2 = mmdet_losses.SeesawLoss(num_classes=NUM_CLASSES)
    ref2.load_state_dict(fresh.state_dict())
    assert ref2.cum_samples.dtype == torch.float32
    assert torch.equal(ref2.cum_samples, fresh.cum_samples.float())


def test_integer_scores_are_refused_and_any_integer_labels_taken():
    loss = mmloss.SeesawLoss(num_classes=NUM_CLASSES, return_dict=False)
    score, labels, weight = batch(torch.Generator().manual_seed(61))
    for dtype in (torch.int64, torch.int32, torch.uint8, torch.bool):
        with pytest.raises(TypeError, match='SeesawLoss: cls_score must be '
                           'a floating point tensor'):
            loss(score.to(dtype), labels)
    with pytest.raises(TypeError, match='SeesawLoss: labels must hold '
                       'integer'):
        loss(score, labels.bool())
    expected = mmloss.SeesawLoss(num_classes=NUM_CLASSES)
    expected_out = expected(score, labels, weight)
    for dtype in (torch.int32, torch.int16, torch.int8, torch.uint8):
        ours = mmloss.SeesawLoss(num_classes=NUM_CLASSES)
        out = ours(score, labels.to(dtype), weight)
        for key in out:
            assert_close(out[key], expected_out[key], what=str(dtype))
        assert torch.equal(ours.cum_samples, expected.cum_samples)
    # uint8 labels against 300 classes: 250 is a class, 255 too
    wide = mmloss.SeesawLoss(num_classes=300)
    labels = torch.tensor([250, 255, 3, 250])
    score = torch.randn(4, 302)
    assert_close(wide(score, labels.to(torch.uint8))['loss_cls_classes'],
                 mmloss.SeesawLoss(num_classes=300)(score, labels)[
                     'loss_cls_classes'])
    assert wide.cum_samples[250] == 2 and wide.cum_samples[300] == 0
    with pytest.raises(ValueError, match='seesaw_ce_loss: labels holds'):
        seesaw_ce_loss(score[:, :300], torch.tensor([0, 1, 2, 300]), None,
                       torch.zeros(300), 300, 0.8, 2.0, 0.01)
    with pytest.raises(ValueError, match='SeesawLoss: labels holds -1'):
        wide(score, torch.tensor([0, -1, 2, 3], dtype=torch.int8))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_reduced_half_loss_is_float32_not_inf(mmdet_losses, dtype):
    # 'sum' over 4000 samples of CE ~30 is ~1e5, past float16's 65504
    g = torch.Generator().manual_seed(62)
    score, labels, _ = batch(g, n=4000, fg=0.5)
    score = (score * 20).to(dtype)
    ref = mmdet_losses.SeesawLoss(num_classes=NUM_CLASSES, reduction='sum')
    ours = mmloss.SeesawLoss(num_classes=NUM_CLASSES, reduction='sum')
    expected = ref(score.float(), labels)
    out = ours(score, labels)
    for key in expected:
        assert out[key].dtype == torch.float32, key
        assert torch.isfinite(out[key]), key
        assert_close(out[key], expected[key], rtol=1e-5, what=key)
    assert expected['loss_cls_classes'] > 65504
    none = ours(score, labels, reduction_override='none')
    assert all(v.dtype == dtype for v in none.values())


def test_function_refuses_misshaped_counts():
    score, labels, counts, _ = _class_inputs()
    with pytest.raises(ValueError, match=r'seesaw_ce_loss: .*cum_samples '
                       r'\(1, 6\)'):
        seesaw_ce_loss(score, labels, None, counts[None], 6, 0.8, 2.0, 0.01)
