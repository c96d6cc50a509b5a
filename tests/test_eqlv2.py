"""EQLV2Loss against MMDetection 3.3, including its running statistics."""
import warnings

import pytest
import torch

import mmloss
from mmloss.losses.eqlv2 import (eqlv2_class_weights, eqlv2_elementwise_loss,
                                 eqlv2_gradient_statistics, eqlv2_loss)
from tests.helpers import assert_close

NUM_CLASSES = 9


def batch(g, n=48, num_classes=NUM_CLASSES):
    """Logits (n, num_classes + 1) and labels in [0, num_classes]."""
    logits = torch.randn(n, num_classes + 1, generator=g) * 3
    labels = torch.randint(0, num_classes + 1, (n, ), generator=g)
    return logits, labels


def step(loss, logits, *args, **kwargs):
    x = logits.clone().requires_grad_()
    out = loss(x, *args, **kwargs)
    upstream = torch.linspace(0.5, 1.5, out.numel()).reshape(out.shape)
    (out * upstream).sum().backward()
    return out.detach(), x.grad


def assert_same_state(ours, ref):
    for name in ('pos_grad', 'neg_grad', 'pos_neg'):
        assert_close(getattr(ours, name), getattr(ref, name), rtol=1e-5,
                     atol=1e-6, what=name)


@pytest.mark.parametrize('seed', [0, 1])
def test_values_gradients_and_state_over_steps(mmdet_losses, seed):
    """Ten steps: the ratios move away from their start (100) and the
    weights with them; every step's value, gradient and state agree."""
    g = torch.Generator().manual_seed(seed)
    cfg = dict(num_classes=NUM_CLASSES, loss_weight=1.5, mu=0.8, alpha=4.0,
               gamma=12)
    ref = mmdet_losses.EQLV2Loss(**cfg)
    ours = mmloss.EQLV2Loss(**cfg)
    for _ in range(10):
        logits, labels = batch(g)
        want, want_grad = step(ref, logits, labels)
        got, got_grad = step(ours, logits, labels)
        assert_close(got, want, what='value')
        assert_close(got_grad, want_grad, what='grad')
        assert_same_state(ours, ref)
    # the weights did leave 1: the test covers the re-weighting
    pos_w, neg_w = eqlv2_class_weights(ours.pos_neg, 12, 0.8, 4.0)
    assert (neg_w[:-1] < 0.99).any() and (pos_w > 1.01).any()


HEAD_CALLS = [
    # what a bbox head passes: all-one label weights, avg_factor = N
    lambda n, g: dict(weight=torch.ones(n), avg_factor=float(n),
                      reduction_override=None),
    # every form MMDetection accepts, and ignores: any weight shape,
    # avg_factor as a number or a tensor, every reduction_override
    lambda n, g: dict(weight=torch.rand(n, generator=g), avg_factor=7),
    lambda n, g: dict(weight=torch.rand(n, NUM_CLASSES + 1, generator=g),
                      avg_factor=torch.tensor(3.0),
                      reduction_override='sum'),
    lambda n, g: dict(weight=torch.rand(3, generator=g),
                      avg_factor=torch.tensor([5.0]),
                      reduction_override='none'),
    lambda n, g: dict(reduction_override='mean'),
]


@pytest.mark.parametrize('label_dtype', [torch.int64, torch.int32])
@pytest.mark.parametrize('call', range(len(HEAD_CALLS)))
def test_every_call_form_equals_mmdet(mmdet_losses, call, label_dtype):
    """MMDetection ignores weight, avg_factor and reduction_override
    (always sum / N): so does mmloss, values, gradients and state."""
    g = torch.Generator().manual_seed(5 + call)
    ref = mmdet_losses.EQLV2Loss(num_classes=NUM_CLASSES)
    ours = mmloss.EQLV2Loss(num_classes=NUM_CLASSES)
    for _ in range(3):
        logits, labels = batch(g)
        kwargs = HEAD_CALLS[call](labels.numel(), g)
        labels = labels.to(label_dtype)
        want, want_grad = step(ref, logits, labels, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            got, got_grad = step(ours, logits, labels, **kwargs)
        assert got.shape == want.shape == ()
        assert_close(got, want, what='value')
        assert_close(got_grad, want_grad, what='grad')
        assert_same_state(ours, ref)


@pytest.mark.parametrize('kwargs, argument', [
    (dict(weight=torch.ones(6)), 'weight'),
    (dict(avg_factor=6.0), 'avg_factor'),
    (dict(reduction_override='sum'), 'reduction_override'),
    (dict(reduction_override='none'), 'reduction_override'),
])
def test_an_ignored_argument_warns_once(kwargs, argument):
    loss = mmloss.EQLV2Loss(num_classes=3)
    logits, labels = batch(torch.Generator().manual_seed(9), 6, 3)
    with pytest.warns(UserWarning,
                      match=f'EQLV2Loss: {argument}=.* is ignored'):
        loss(logits, labels, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        loss(logits, labels, **kwargs)  # once per module and argument


@pytest.mark.parametrize('kwargs, argument', [
    (dict(use_sigmoid=False), 'use_sigmoid'),
    (dict(class_weight=[1.0, 2.0]), 'class_weight'),
    (dict(reduction='sum'), 'reduction'),
])
def test_an_ignored_constructor_argument_warns(mmdet_losses, kwargs,
                                               argument):
    with pytest.warns(UserWarning,
                      match=f'EQLV2Loss: {argument}=.* is ignored'):
        ours = mmloss.EQLV2Loss(num_classes=3, **kwargs)
    ref = mmdet_losses.EQLV2Loss(num_classes=3, **kwargs)
    assert ours.use_sigmoid is ref.use_sigmoid is True
    assert ours.class_weight == ref.class_weight
    logits, labels = batch(torch.Generator().manual_seed(8), 6, 3)
    assert_close(ours(logits, labels), ref(logits, labels))


def test_the_defaults_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        loss = mmloss.EQLV2Loss(num_classes=3)
        loss(*batch(torch.Generator().manual_seed(9), 6, 3),
             reduction_override='mean')


def test_reductions_and_weights():
    g = torch.Generator().manual_seed(2)
    logits, labels = batch(g, 20)
    weight = torch.rand(20, generator=g)
    loss = mmloss.EQLV2Loss(num_classes=NUM_CLASSES)
    pos_w, neg_w = loss.get_weight(logits)
    none = eqlv2_loss(logits, labels, pos_w, neg_w, weight, 'none')
    assert none.shape == (20, )
    one_hot = torch.nn.functional.one_hot(labels, NUM_CLASSES + 1).float()
    by_hand = (torch.nn.functional.binary_cross_entropy_with_logits(
        logits, one_hot, reduction='none') *
        (pos_w * one_hot + neg_w * (1 - one_hot))).sum(1) * weight
    assert_close(none, by_hand, what='none')
    assert_close(eqlv2_loss(logits, labels, pos_w, neg_w, weight, 'sum'),
                 by_hand.sum())
    assert_close(eqlv2_loss(logits, labels, pos_w, neg_w, weight, 'mean'),
                 by_hand.mean())
    assert_close(eqlv2_loss(logits, labels, pos_w, neg_w, weight, 'mean',
                            avg_factor=7.0), by_hand.sum() / 7.0)
    element_weight = weight[:, None].expand(20, NUM_CLASSES + 1)
    assert_close(eqlv2_loss(logits, labels, pos_w, neg_w, element_weight,
                            'none'), none)


def test_gradient_statistics_are_the_weighted_bce_gradients():
    g = torch.Generator().manual_seed(3)
    logits, labels = batch(g, 30)
    pos_w = torch.rand(NUM_CLASSES + 1, generator=g) + 1
    neg_w = torch.rand(NUM_CLASSES + 1, generator=g)
    x = logits.clone().requires_grad_()
    eqlv2_elementwise_loss(x, labels, pos_w, neg_w).sum().backward()
    one_hot = torch.nn.functional.one_hot(labels, NUM_CLASSES + 1).float()
    magnitude = x.grad.abs()
    positive, negative = eqlv2_gradient_statistics(logits, labels, pos_w,
                                                   neg_w)
    assert_close(positive, (magnitude * one_hot).sum(0)[:-1])
    assert_close(negative, (magnitude * (1 - one_hot)).sum(0)[:-1])


def test_interface_matches_mmdet(mmdet_losses):
    ref = mmdet_losses.EQLV2Loss(num_classes=NUM_CLASSES)
    ours = mmloss.EQLV2Loss(num_classes=NUM_CLASSES)
    assert ours.use_sigmoid is ref.use_sigmoid is True
    assert ours.get_channel_num(NUM_CLASSES) == \
        ref.get_channel_num(NUM_CLASSES)
    for attribute in ('custom_cls_channels', 'custom_activation'):
        assert hasattr(ours, attribute) == hasattr(ref, attribute)
    assert set(dict(ours.named_buffers())) == set(dict(ref.named_buffers()))
    logits, _ = batch(torch.Generator().manual_seed(4))
    for test_with_obj in (True, False):
        ref.test_with_obj = ours.test_with_obj = test_with_obj
        assert_close(ours.get_activation(logits),
                     ref.get_activation(logits.clone()))
    # checkpoints load both ways
    ours.load_state_dict(ref.state_dict())


def test_edge_cases():
    loss = mmloss.EQLV2Loss(num_classes=3)
    x = torch.zeros(0, 4, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.long)
    for kwargs in (dict(), dict(avg_factor=0), dict(weight=torch.zeros(0))):
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # the ignored arguments
            out = loss(x, empty, **kwargs)
        assert out.item() == 0.0  # mmdet: 0 / 0 = NaN
        grad, = torch.autograd.grad(out, x)
        assert grad.shape == x.shape
    # nothing collected, but the ratio is refreshed as in MMDetection:
    # 0 / (0 + 1e-10)
    assert torch.equal(loss.pos_grad, torch.zeros(3))
    assert torch.equal(loss.pos_neg, torch.zeros(3))
    logits, labels = batch(torch.Generator().manual_seed(0), 10, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        # ignored, as MMDetection ignores them: not a zero loss
        out = mmloss.EQLV2Loss(num_classes=3)(
            logits, labels, weight=torch.zeros(10), avg_factor=0)
    assert sorted(str(w.message).split('=')[0] for w in caught) == [
        'EQLV2Loss: avg_factor', 'EQLV2Loss: weight']
    assert out.item() > 0.0
    for dtype in (torch.float16, torch.bfloat16):
        half = (logits * 20).to(dtype).requires_grad_()
        out = loss(half, labels)
        assert out.dtype == torch.float32 and torch.isfinite(out)
        grad, = torch.autograd.grad(out, half)
        assert grad.dtype == dtype and torch.isfinite(grad).all()
        assert torch.isfinite(loss.pos_neg).all()


def test_invalid_arguments_and_inputs_name_the_loss():
    with pytest.raises(ValueError, match='EQLV2Loss: num_classes'):
        mmloss.EQLV2Loss(num_classes=0)
    loss = mmloss.EQLV2Loss(num_classes=3)
    labels = torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match=r'EQLV2Loss: .*\(5, 3\)'):
        loss(torch.zeros(5, 3), labels)
    with pytest.raises(ValueError, match=r'EQLV2Loss: .*\(4,\)'):
        loss(torch.zeros(5, 4), labels[:4])
    with pytest.raises(TypeError, match='EQLV2Loss: label'):
        loss(torch.zeros(5, 4), labels.float())
    with pytest.raises(ValueError, match='EQLV2Loss: label holds 4'):
        loss(torch.zeros(5, 4), torch.tensor([0, 1, 4, 3, 2]))
    with pytest.raises(ValueError, match='EQLV2Loss: reduction_override'):
        loss(torch.zeros(5, 4), labels, reduction_override='max')
    # a rejected call leaves the statistics alone
    assert torch.equal(loss.pos_grad, torch.zeros(3))


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_a_non_finite_batch_leaves_the_statistics_alone(bad):
    """Issue 14: a batch with a NaN/Inf score has a non-finite loss (not
    masked) and leaves pos_grad/neg_grad/pos_neg as they were; in mmdet it
    made them NaN and every later loss NaN."""
    g = torch.Generator().manual_seed(3)
    loss = mmloss.EQLV2Loss(num_classes=NUM_CLASSES)
    step(loss, *batch(g))
    before = {name: getattr(loss, name).clone()
              for name in ('pos_grad', 'neg_grad', 'pos_neg')}
    logits, labels = batch(g)
    logits[2, 1] = bad
    out, _ = step(loss, logits, labels)
    assert not torch.isfinite(out).all()
    for name, state in before.items():
        assert torch.equal(getattr(loss, name), state), name
    out, grad = step(loss, *batch(g))
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    assert not torch.equal(loss.pos_grad, before['pos_grad'])
