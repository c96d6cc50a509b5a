"""KnowledgeDistillationKLDivLoss against MMDetection 3.3."""
import dataclasses
import itertools

import pytest
import torch

import mmloss
from mmloss.engine import dispatch
from mmloss.engine.functions import gradient_from_output
from mmloss.losses import kd
from mmloss.losses.kd import knowledge_distillation_kl_div_loss
from mmloss.reduction import FLOAT32_EPS
from tests.helpers import assert_close
from tests.test_focal import (assert_second_order, engine_ran,
                              graph_functions, saved_bytes, small_blocks,
                              value_grad_hvp)

REDUCTIONS = ('none', 'mean', 'sum')
NAME = 'KnowledgeDistillationKLDivLoss'


@pytest.fixture(autouse=True)
def fast_paths_for_every_size(monkeypatch):
    """The tests here use small inputs; run the fast path on them too (by
    default the dispatch table sends fewer than ``min_rows`` rows to the
    plain formula, which is faster there)."""
    for kind, entry in list(dispatch.TUNING.items()):
        monkeypatch.setitem(dispatch.TUNING, kind, dataclasses.replace(
            entry, min_rows={key: rows for key, rows in entry.min_rows.items()
                             if key != NAME}))


def test_min_rows_of_the_dispatch_table(monkeypatch):
    """Fewer rows than the table's ``min_rows`` take the plain formula,
    as many or more the kernel; both give the same value."""
    entry = dataclasses.replace(dispatch.TUNING['cpu'], min_rows={NAME: 20})
    monkeypatch.setitem(dispatch.TUNING, 'cpu', entry)
    gen = torch.Generator().manual_seed(3)
    pred, soft = torch.randn(2, 20, 7, generator=gen)
    for n, engine in ((19, False), (20, True)):
        x = pred[:n].clone().requires_grad_()
        out = mmloss.KnowledgeDistillationKLDivLoss()(x, soft[:n])
        assert ('GradientFromOutputBackward' in graph_functions(out)) == \
            engine
        with mmloss.fast_paths(False):
            assert_close(out, mmloss.KnowledgeDistillationKLDivLoss()(
                x, soft[:n]))


def kernel_path(pred, soft, T, row_weight, reduce_sum):
    """The fast kernel through the engine's Function (what the fast path
    runs); the teacher is a constant to it."""
    return gradient_from_output(kd.kd_rule(T, reduce_sum), pred,
                                soft.detach(), row_weight)


def compare(ref, ours, pred, soft, *args, grad_atol=1e-6, **kwargs):
    xa, xb = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    sa, sb = soft.clone().requires_grad_(), soft.clone().requires_grad_()
    a, b = ref(xa, sa, *args, **kwargs), ours(xb, sb, *args, **kwargs)
    assert b.shape == a.shape
    assert_close(b, a, what='value')
    proj = torch.linspace(-1, 1, a.numel()).reshape(a.shape)
    (a * proj).sum().backward()
    (b * proj).sum().backward()
    assert_close(xb.grad, xa.grad, atol=grad_atol, what='grad')
    # the teacher is detached in both
    assert sa.grad is None and sb.grad is None


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('reduction', REDUCTIONS)
@pytest.mark.parametrize('T', [1, 10])
def test_parity_grid(mmdet_losses, seed, reduction, T):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(48, 17, generator=g) * 3
    soft = torch.randn(48, 17, generator=g) * 3
    weight = torch.rand(48, generator=g)
    kwargs = dict(reduction=reduction, T=T, loss_weight=0.25)
    ref = mmdet_losses.KnowledgeDistillationKLDivLoss(**kwargs)
    ours = mmloss.KnowledgeDistillationKLDivLoss(**kwargs)
    compare(ref, ours, pred, soft)
    compare(ref, ours, pred, soft, weight)
    if reduction == 'mean':
        compare(ref, ours, pred, soft, weight, avg_factor=12.0)
        # avg_factor=0 divides by the float32 eps: gradients scale by 1e7
        compare(ref, ours, pred, soft, weight, avg_factor=0,
                grad_atol=1e-6 / FLOAT32_EPS)
    for override in REDUCTIONS:
        compare(ref, ours, pred, soft, weight, reduction_override=override)


def test_parity_realistic_size(mmdet_losses):
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(100_000, 17, generator=g) * 2
    soft = torch.randn(100_000, 17, generator=g) * 2
    weight = torch.rand(100_000, generator=g)
    compare(mmdet_losses.KnowledgeDistillationKLDivLoss(),
            mmloss.KnowledgeDistillationKLDivLoss(), pred, soft, weight,
            avg_factor=4.0)


def test_hand_computed():
    pred = torch.tensor([[0.0, 0.0]])
    soft = torch.tensor([[2.0, 0.0]])
    t = torch.softmax(soft / 2, 1)
    expected = (t * (t.log() - torch.log(torch.tensor(0.5)))).mean() * 4
    out = mmloss.KnowledgeDistillationKLDivLoss(T=2)(pred, soft)
    assert_close(out, expected)
    # identical logits: zero loss
    assert mmloss.KnowledgeDistillationKLDivLoss()(soft, soft).item() == \
        pytest.approx(0, abs=1e-7)


def test_fast_matches_plain_and_gradcheck():
    g = torch.Generator().manual_seed(4)
    pred = torch.randn(7, 5, generator=g, dtype=torch.float64)
    soft = torch.randn(7, 5, generator=g, dtype=torch.float64)
    weights = (None, torch.rand(7, generator=g, dtype=torch.float64),
               torch.tensor(0.5, dtype=torch.float64))
    for reduction, weight, avg_factor, temperature in itertools.product(
            REDUCTIONS, weights, (None, 4.0), (3, 1)):
        if reduction == 'sum' and avg_factor is not None:
            continue
        results = []
        for fast in (True, False):
            x = pred.clone().requires_grad_()
            out = knowledge_distillation_kl_div_loss(
                x, soft, weight, reduction=reduction, avg_factor=avg_factor,
                T=temperature, fast=fast)
            out.sum().backward()
            results.append((out.detach(), x.grad))
        assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)
        assert_close(results[0][1], results[1][1], rtol=1e-12, atol=1e-12)
    x = pred.clone().requires_grad_()
    for row_weight, reduce_sum in itertools.product(weights[:2],
                                                    (False, True)):
        assert torch.autograd.gradcheck(
            lambda t: kernel_path(t, soft, 3.0, row_weight, reduce_sum),
            (x,))
    assert torch.autograd.gradcheck(
        lambda t: mmloss.KnowledgeDistillationKLDivLoss(T=2)(t, soft), (x,))
    # the plain path with a live teacher is differentiable in both
    s = soft.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: knowledge_distillation_kl_div_loss(
            a, b, T=2, detach_target=False), (x, s))


# ------------------------------------------------------------- hardening
@pytest.mark.parametrize('reduction', REDUCTIONS)
def test_empty_input(reduction):
    pred = torch.zeros(0, 17, requires_grad=True)
    out = mmloss.KnowledgeDistillationKLDivLoss(reduction=reduction)(
        pred, torch.zeros(0, 17))
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert pred.grad is not None


def test_zero_weight_and_extreme_logits(mmdet_losses):
    pred = torch.tensor([[100.0, -100.0, 0.0], [-100.0, 100.0, 3.0]])
    soft = torch.tensor([[-100.0, 100.0, 0.0], [0.0, 0.0, 100.0]])
    compare(mmdet_losses.KnowledgeDistillationKLDivLoss(T=1),
            mmloss.KnowledgeDistillationKLDivLoss(T=1), pred, soft)
    out = mmloss.KnowledgeDistillationKLDivLoss()(pred, soft,
                                                  torch.zeros(2))
    assert out.item() == 0


def test_masked_teacher_logit(mmdet_losses):
    """A -inf teacher logit is a zero probability: it adds 0, as in
    F.kl_div (MMDetection's value), never NaN."""
    pred = torch.randn(3, 4)
    soft = torch.randn(3, 4)
    soft[0, 1] = float('-inf')
    compare(mmdet_losses.KnowledgeDistillationKLDivLoss(T=1),
            mmloss.KnowledgeDistillationKLDivLoss(T=1), pred, soft)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    g = torch.Generator().manual_seed(5)
    pred = torch.randn(5000, 17, generator=g) * 3
    soft = torch.randn(5000, 17, generator=g) * 3
    loss = mmloss.KnowledgeDistillationKLDivLoss(reduction='sum')
    x = pred.to(dtype).requires_grad_()
    out = loss(x, soft.to(dtype))
    # a reduced loss of half inputs is float32 (mmloss.precision)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    out.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    expected = loss(pred.to(dtype).float(), soft.to(dtype).float())
    assert_close(out.float(), expected, rtol=1e-2, atol=0)


def test_nan_propagates():
    pred = torch.randn(3, 4)
    pred[1, 1] = float('nan')
    assert torch.isnan(
        mmloss.KnowledgeDistillationKLDivLoss()(pred, torch.randn(3, 4)))


def test_invalid_inputs():
    loss = mmloss.KnowledgeDistillationKLDivLoss()
    with pytest.raises(ValueError, match='KnowledgeDistillationKLDivLoss'):
        loss(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match='KnowledgeDistillationKLDivLoss'):
        loss(torch.randn(4), torch.randn(4))
    with pytest.raises(TypeError, match='KnowledgeDistillationKLDivLoss'):
        loss(torch.randn(3, 4), torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match='KnowledgeDistillationKLDivLoss'):
        loss(torch.randn(3, 4), torch.randn(3, 4), torch.ones(4))
    with pytest.raises(ValueError, match='KnowledgeDistillationKLDivLoss'):
        loss(torch.randn(3, 4), torch.randn(3, 4), reduction_override='x')
    with pytest.raises(ValueError, match='KnowledgeDistillationKLDivLoss'):
        loss(torch.randn(3, 4), torch.randn(3, 4), reduction_override='sum',
             avg_factor=2)
    for kwargs in (dict(T=0.5), dict(T='hot'), dict(loss_weight=-1.0)):
        with pytest.raises(ValueError, match='KnowledgeDistillationKLDiv'):
            mmloss.KnowledgeDistillationKLDivLoss(**kwargs)
    # an unknown reduction builds, as in MMDetection, and the call raises
    built = mmloss.KnowledgeDistillationKLDivLoss(reduction='avg')
    with pytest.raises(ValueError, match='KnowledgeDistillationKLDiv'):
        built(torch.randn(3, 4), torch.randn(3, 4))


def test_registry_build():
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    built = MODELS.build(dict(type='mmloss.KnowledgeDistillationKLDivLoss',
                              T=5, loss_weight=0.5))
    assert isinstance(built, mmloss.KnowledgeDistillationKLDivLoss)
    assert built.T == 5


# ------------------------------------------ the engine: double backward
def _kd_inputs(n=11, c=5, seed=40):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=g, dtype=torch.float64) * 2,
            torch.randn(n, c, generator=g, dtype=torch.float64) * 2,
            torch.rand(n, generator=g, dtype=torch.float64))


@pytest.mark.parametrize('kind', ['cpu', 'cuda'])
@pytest.mark.parametrize('reduction,weighted,avg_factor', [
    ('mean', False, None), ('mean', True, 4.0), ('sum', True, None),
    ('none', True, None)])
def test_double_backward_equals_the_plain_formula(kind, reduction, weighted,
                                                  avg_factor):
    """create_graph=True gives a gradient with a graph whose Hessian-vector
    product is the plain formula's, with the CPU's in-place log-softmax and
    (pretended) an accelerator's."""
    pred, soft, weight = _kd_inputs()
    loss = mmloss.KnowledgeDistillationKLDivLoss(T=3, reduction=reduction)

    def fn(x):
        return loss(x, soft, weight if weighted else None,
                    avg_factor=avg_factor)

    with dispatch.pretend_device(kind):
        fast = value_grad_hvp(fn, [pred], expect_engine=True)
    plain = value_grad_hvp(fn, [pred], fast=False, expect_engine=False)
    assert_second_order(fast, plain)


def test_second_derivatives_match_mmdet(mmdet_losses):
    pred, soft, weight = _kd_inputs()
    results = [value_grad_hvp(lambda x: m(x, soft, weight, avg_factor=3.0),
                              [pred]) for m in (
        mmloss.KnowledgeDistillationKLDivLoss(T=2),
        mmdet_losses.KnowledgeDistillationKLDivLoss(T=2))]
    assert_second_order(*results)


def test_gradgradcheck():
    pred, soft, weight = _kd_inputs(5, 4)
    x = pred.clone().requires_grad_()
    for row_weight, reduce_sum in itertools.product((None, weight),
                                                    (False, True)):
        assert torch.autograd.gradgradcheck(
            lambda t: kernel_path(t, soft, 3.0, row_weight, reduce_sum),
            (x,))
    assert torch.autograd.gradgradcheck(
        lambda t: mmloss.KnowledgeDistillationKLDivLoss(T=2)(t, soft), (x,))
    # a live teacher: the plain formula, second derivatives in both
    s = soft.clone().requires_grad_()
    assert torch.autograd.gradgradcheck(
        lambda a, b: knowledge_distillation_kl_div_loss(
            a, b, T=2, detach_target=False), (x, s))


def test_a_live_teacher_takes_the_plain_formula():
    pred, soft, _ = _kd_inputs()
    x, s = pred.clone().requires_grad_(), soft.clone().requires_grad_()
    out = knowledge_distillation_kl_div_loss(x, s, T=2, detach_target=False)
    assert not graph_functions(out)
    out.backward()
    assert s.grad.abs().max() > 0
    # a teacher without grad and detach_target=False: the fast path
    out = knowledge_distillation_kl_div_loss(x, soft, T=2,
                                             detach_target=False)
    assert engine_ran(out)
    assert not graph_functions(knowledge_distillation_kl_div_loss(
        x, soft, T=2, fast=False))


@pytest.mark.parametrize('n', [16, 3000])
def test_autocast_gives_the_float32_result(n):
    g = torch.Generator().manual_seed(41)
    pred = torch.randn(n, 17, generator=g) * 3
    soft = torch.randn(n, 17, generator=g) * 3
    weight = torch.rand(n, generator=g)
    for reduction in REDUCTIONS:
        loss = mmloss.KnowledgeDistillationKLDivLoss(reduction=reduction)
        results = []
        for autocast in (False, True):
            x = pred.clone().requires_grad_()
            with torch.autocast('cpu', dtype=torch.bfloat16,
                                enabled=autocast):
                out = loss(x, soft, weight)
            out.sum().backward()
            assert out.dtype == torch.float32
            results.append((out.detach(), x.grad))
        assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-7)
        assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-9)


def test_function_errors_name_the_function_and_the_shapes():
    with pytest.raises(ValueError, match=r'knowledge_distillation_kl_div_'
                       r'loss: pred has shape \(3, 4\) but soft_label has '
                       r'shape \(3, 5\)'):
        knowledge_distillation_kl_div_loss(torch.randn(3, 4),
                                           torch.randn(3, 5), T=2)
    with pytest.raises(ValueError, match=r'knowledge_distillation_kl_div_'
                       r'loss: weight has shape \(4,\)'):
        knowledge_distillation_kl_div_loss(torch.randn(3, 4),
                                           torch.randn(3, 4), torch.ones(4),
                                           T=2)


# ------------------------------- gradient in backward: forms and the graph
def test_the_graph_keeps_the_two_softmaxes_only():
    """The fast path keeps the student's and the teacher's softmax (not
    the logits) and the weight: as much as mmdet's two N x C tensors and
    its weight, nothing more."""
    g = torch.Generator().manual_seed(50)
    pred = torch.randn(3000, 17, generator=g).requires_grad_()
    soft = torch.randn(3000, 17, generator=g)
    weight = torch.rand(3000, generator=g)
    for args in ((pred, soft), (pred, soft, weight)):
        total, kept = saved_bytes(mmloss.KnowledgeDistillationKLDivLoss(),
                                  *args)
        assert kept == {x.untyped_storage().data_ptr() for x in args[2:]}
        assert total == sum(x.numel() * 4 for x in args)


@pytest.mark.parametrize('kind', ['cpu', 'cuda'])
@pytest.mark.parametrize('T', [1, 10])
def test_unshifted_and_log_softmax_forms(monkeypatch, kind, T):
    """The CPU's unshifted exponentials (blocks whose row sums leave the
    range fall back, here the rows with logits of 200) and the
    accelerator's log-softmax form, over several row blocks, give the
    plain formula's value and gradient; a -inf teacher logit adds 0."""
    small_blocks(monkeypatch)
    g = torch.Generator().manual_seed(51)
    pred = torch.randn(40, 17, generator=g, dtype=torch.float64) * 3
    soft = torch.randn(40, 17, generator=g, dtype=torch.float64) * 3
    pred[7] += 200.0
    soft[30, 2] = float('-inf')
    assert len(kd.row_blocks(pred)) > 1
    for reduction in REDUCTIONS:
        results = []
        for fast in (True, False):
            x = pred.clone().requires_grad_()
            with mmloss.fast_paths(fast), dispatch.pretend_device(kind):
                out = knowledge_distillation_kl_div_loss(
                    x, soft, reduction=reduction, T=T)
                assert engine_ran(out) == fast
            out.sum().backward()
            results.append((out.detach(), x.grad))
        assert_close(results[0][0], results[1][0], rtol=1e-11, atol=1e-11)
        assert_close(results[0][1], results[1][1], rtol=1e-11, atol=1e-13)


def test_logits_a_constant_apart_keep_their_digits():
    """A teacher whose logits are the student's plus a large constant per
    row has KL 0: the centred difference gives 0 to float32 rounding of the
    logits, not of the constant."""
    g = torch.Generator().manual_seed(52)
    pred = torch.randn(64, 17, generator=g)
    offset = torch.linspace(-30, 30, 64).unsqueeze(1)
    x = pred.clone().requires_grad_()
    out = mmloss.KnowledgeDistillationKLDivLoss(T=1, reduction='none')(
        x, pred + offset)
    assert out.abs().max() < 1e-5
    out.sum().backward()
    assert x.grad.abs().max() < 1e-6
