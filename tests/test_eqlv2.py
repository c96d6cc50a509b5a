"""EQLV2Loss against MMDetection 3.3, including its running statistics."""
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


def test_head_call_equals_mmdet(mmdet_losses):
    """What a bbox head passes (all-one label weights, avg_factor = N, a
    reduction_override of None) gives MMDetection's value; MMDetection
    ignores the three, mmloss applies them."""
    g = torch.Generator().manual_seed(5)
    ref = mmdet_losses.EQLV2Loss(num_classes=NUM_CLASSES)
    ours = mmloss.EQLV2Loss(num_classes=NUM_CLASSES)
    for _ in range(3):
        logits, labels = batch(g)
        n = float(labels.numel())
        kwargs = dict(weight=torch.ones(labels.shape), avg_factor=n,
                      reduction_override=None)
        want, want_grad = step(ref, logits, labels, **kwargs)
        got, got_grad = step(ours, logits, labels, **kwargs)
        assert_close(got, want, what='value')
        assert_close(got_grad, want_grad, what='grad')
        assert_same_state(ours, ref)


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
        out = loss(x, empty, **kwargs)
        assert out.item() == 0.0  # mmdet: 0 / 0 = NaN
        grad, = torch.autograd.grad(out, x)
        assert grad.shape == x.shape
    # nothing collected, but the ratio is refreshed as in MMDetection:
    # 0 / (0 + 1e-10)
    assert torch.equal(loss.pos_grad, torch.zeros(3))
    assert torch.equal(loss.pos_neg, torch.zeros(3))
    logits, labels = batch(torch.Generator().manual_seed(0), 10, 3)
    out = loss(logits, labels, weight=torch.zeros(10), avg_factor=0)
    assert out.item() == 0.0
    for dtype in (torch.float16, torch.bfloat16):
        half = (logits * 20).to(dtype).requires_grad_()
        out = loss(half, labels)
        assert out.dtype == torch.float32 and torch.isfinite(out)
        grad, = torch.autograd.grad(out, half)
        assert grad.dtype == dtype and torch.isfinite(grad).all()
        assert torch.isfinite(loss.pos_neg).all()


def test_invalid_arguments_and_inputs_name_the_loss():
    with pytest.raises(ValueError, match='EQLV2Loss: .*use_sigmoid'):
        mmloss.EQLV2Loss(use_sigmoid=False)
    with pytest.raises(ValueError, match='EQLV2Loss: class_weight'):
        mmloss.EQLV2Loss(class_weight=[1.0])
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
    with pytest.raises(ValueError, match=r'EQLV2Loss: weight has shape'):
        loss(torch.zeros(5, 4), labels, weight=torch.ones(3))
    with pytest.raises(ValueError, match='EQLV2Loss: avg_factor'):
        loss(torch.zeros(5, 4), labels, avg_factor=2.0,
             reduction_override='sum')
    # a rejected call leaves the statistics alone
    assert torch.equal(loss.pos_grad, torch.zeros(3))
