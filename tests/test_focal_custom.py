"""FocalCustomLoss (V3Det) against MMDetection 3.3, and in an FCOS head."""
import pytest
import torch

import mmloss
from tests.helpers import assert_close

NUM_CLASSES = 7
REDUCTIONS = ('none', 'mean', 'sum')


def batch(seed, n=64, num_classes=NUM_CLASSES):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, num_classes, generator=g) * 3
    labels = torch.randint(0, num_classes + 1, (n, ), generator=g)
    return logits, labels, torch.rand(n, generator=g)


def value_and_grad(loss, logits, *args, **kwargs):
    x = logits.clone().requires_grad_()
    out = loss(x, *args, **kwargs)
    upstream = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    (out * upstream).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize('reduction', REDUCTIONS)
@pytest.mark.parametrize('seed', [0, 1])
def test_parity_with_mmdet(mmdet_losses, reduction, seed):
    cfg = dict(num_classes=NUM_CLASSES, gamma=1.5, alpha=0.3,
               reduction=reduction, loss_weight=1.7)
    ref = mmdet_losses.FocalCustomLoss(**cfg)
    ours = mmloss.FocalCustomLoss(**cfg)
    logits, labels, weight = batch(seed)
    calls = [dict(), dict(weight=weight), dict(weight=weight[:, None]),
             dict(weight=weight.repeat(NUM_CLASSES, 1).t())]
    if reduction == 'mean':
        calls += [dict(weight=weight, avg_factor=11.0), dict(avg_factor=0)]
    calls += [dict(weight=weight, reduction_override=r) for r in REDUCTIONS]
    for kwargs in calls:
        want, want_grad = value_and_grad(ref, logits, labels, **kwargs)
        got, got_grad = value_and_grad(ours, logits, labels, **kwargs)
        scale = 1 / torch.finfo(torch.float32).eps \
            if kwargs.get('avg_factor') == 0 else 1.0
        assert got.shape == want.shape, kwargs
        assert_close(got, want, what=f'value {kwargs}')
        assert_close(got_grad, want_grad, atol=1e-6 * scale,
                     what=f'grad {kwargs}')


def test_head_interface_matches_mmdet(mmdet_losses):
    ref = mmdet_losses.FocalCustomLoss(num_classes=NUM_CLASSES)
    ours = mmloss.FocalCustomLoss(num_classes=NUM_CLASSES)
    for flag in ('use_sigmoid', 'custom_cls_channels', 'custom_activation',
                 'custom_accuracy'):
        assert getattr(ours, flag) is getattr(ref, flag) is True, flag
    assert ours.get_cls_channels(NUM_CLASSES) == \
        ref.get_cls_channels(NUM_CLASSES)
    logits, labels, _ = batch(3)
    assert_close(ours.get_activation(logits), ref.get_activation(logits))
    ours_acc = ours.get_accuracy(logits, labels)
    ref_acc = ref.get_accuracy(logits, labels)
    assert ours_acc.keys() == ref_acc.keys() == {'acc_classes'}
    assert_close(ours_acc['acc_classes'].reshape(-1),
                 ref_acc['acc_classes'].reshape(-1))


def test_edge_cases():
    loss = mmloss.FocalCustomLoss(num_classes=3)
    # empty input: a finite zero connected to the graph
    x = torch.zeros(0, 3, requires_grad=True)
    for kwargs in (dict(), dict(avg_factor=0), dict(weight=torch.zeros(0))):
        out = loss(x, torch.zeros(0, dtype=torch.long), **kwargs)
        assert out.item() == 0.0
        grad, = torch.autograd.grad(out, x)
        assert grad.shape == x.shape
    # all-zero weights give 0
    logits, labels, _ = batch(0, 10, 3)
    out = loss(logits, labels, weight=torch.zeros(10), avg_factor=0)
    assert out.item() == 0.0
    # half inputs: finite, reduced in float32
    for dtype in (torch.float16, torch.bfloat16):
        half = (logits * 20).to(dtype).requires_grad_()
        out = loss(half, labels)
        assert out.dtype == torch.float32 and torch.isfinite(out)
        grad, = torch.autograd.grad(out, half)
        assert grad.dtype == dtype and torch.isfinite(grad).all()


def test_invalid_arguments_and_inputs_name_the_loss():
    with pytest.raises(ValueError, match='FocalCustomLoss: num_classes'):
        mmloss.FocalCustomLoss()
    with pytest.raises(ValueError, match='FocalCustomLoss: .*use_sigmoid'):
        mmloss.FocalCustomLoss(use_sigmoid=False, num_classes=3)
    with pytest.raises(ValueError, match='FocalCustomLoss: activated'):
        mmloss.FocalCustomLoss(num_classes=3, activated=True)
    loss = mmloss.FocalCustomLoss(num_classes=3)
    with pytest.raises(ValueError, match=r'FocalCustomLoss: .*\(4, 5\)'):
        loss(torch.zeros(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match='FocalCustomLoss: target'):
        loss(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match='FocalCustomLoss: target holds 4'):
        loss(torch.zeros(4, 3), torch.tensor([0, 1, 4, 3]))
    with pytest.raises(ValueError, match='FocalCustomLoss: the head has 5'):
        loss.get_cls_channels(5)


def test_fcos_head_as_in_the_v3det_config():
    """An FCOS head with ``FocalCustomLoss`` (the V3Det config) gives
    MMDetection's losses and parameter gradients with mmloss's twin."""
    pytest.importorskip('mmdet.models')
    from mmengine.config import ConfigDict
    from tests.test_heads import (NUM_CLASSES as HEAD_CLASSES, STRIDES,
                                  build_pair, compare_losses,
                                  synthetic_batch)
    cfg = dict(
        type='FCOSHead', num_classes=HEAD_CLASSES, in_channels=8,
        stacked_convs=1, feat_channels=8, strides=STRIDES, norm_cfg=None,
        regress_ranges=((-1, 16), (16, 1e8)),
        test_cfg=dict(nms_pre=100, min_bbox_size=0, score_thr=0.0,
                      nms=dict(type='nms', iou_threshold=0.6),
                      max_per_img=20),
        loss_cls=dict(type='FocalCustomLoss', use_sigmoid=True,
                      num_classes=HEAD_CLASSES, gamma=2.0, alpha=0.25,
                      loss_weight=1.0),
        loss_bbox=dict(type='IoULoss', loss_weight=1.0),
        loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True,
                             loss_weight=1.0))
    ref, ours = build_pair(cfg)
    for head in (ref, ours):
        head.test_cfg = ConfigDict(head.test_cfg)
    assert ours.cls_out_channels == ref.cls_out_channels == HEAD_CLASSES
    feats, instances, metas = synthetic_batch(seed=0)
    ref_out, our_out = ref(feats), ours(feats)
    compare_losses(ref, ours, ref.loss_by_feat(*ref_out, instances, metas),
                   ours.loss_by_feat(*our_out, instances, metas))
    # inference reads get_activation through custom_cls_channels
    with torch.no_grad():
        ref_res = ref.predict_by_feat(*ref(feats), batch_img_metas=metas,
                                      rescale=False)
        our_res = ours.predict_by_feat(*ours(feats), batch_img_metas=metas,
                                       rescale=False)
    for a, b in zip(ref_res, our_res):
        assert len(a.scores) > 0
        assert_close(b.scores, a.scores, what='scores')
        assert torch.equal(b.labels, a.labels)
