"""PISA's isr_p and carl_loss against MMDetection 3.3 on realistic RoIs."""
import types

import pytest
import torch

import mmloss
from mmloss.losses.pisa import carl_loss, isr_p, rank_within_groups
from tests.helpers import assert_close, jitter_boxes, random_boxes

NUM_CLASSES = 5


@pytest.fixture(scope='module')
def coder():
    coders = pytest.importorskip('mmdet.models.task_modules.coders')
    return coders.DeltaXYWHBBoxCoder(target_means=[0.0] * 4,
                                     target_stds=[0.1, 0.1, 0.2, 0.2])


def roi_batch(coder, seed, images=3, class_specific=True, five=True):
    """Sampled RoIs as a two-stage head sees them: per image the positives
    (RoIs near their ground truth) first, then the negatives."""
    g = torch.Generator().manual_seed(seed)
    rois, labels, targets, results = [], [], [], []
    for image in range(images):
        num_gts = int(torch.randint(1, 4, (1, ), generator=g))
        num_pos = int(torch.randint(0, 14, (1, ), generator=g))
        gts = random_boxes(num_gts, g, 100.0)
        gt_labels = torch.randint(0, NUM_CLASSES, (num_gts, ), generator=g)
        assigned = torch.randint(0, num_gts, (num_pos, ), generator=g)
        boxes = torch.cat([jitter_boxes(gts[assigned], g, 0.3),
                           random_boxes(10, g, 100.0)])
        if five:
            boxes = torch.cat([torch.full((len(boxes), 1), float(image)),
                               boxes], dim=1)
        rois.append(boxes)
        labels.append(torch.cat([gt_labels[assigned],
                                 torch.full((10, ), NUM_CLASSES)]))
        target = torch.zeros(len(boxes), 4)
        target[:num_pos] = coder.encode(boxes[:num_pos, -4:], gts[assigned])
        targets.append(target)
        results.append(types.SimpleNamespace(pos_assigned_gt_inds=assigned))
    rois, labels, targets = map(torch.cat, (rois, labels, targets))
    n = len(rois)
    cls_score = torch.randn(n, NUM_CLASSES + 1, generator=g) * 2
    columns = 4 * NUM_CLASSES if class_specific else 4
    bbox_pred = torch.randn(n, columns, generator=g) * 0.1
    label_weights = torch.rand(n, generator=g) * 0.5 + 0.5
    return dict(cls_score=cls_score, bbox_pred=bbox_pred, rois=rois,
                labels=labels, targets=targets, results=results,
                label_weights=label_weights, bbox_weights=torch.ones(n, 4))


def isr_inputs(batch):
    return (batch['cls_score'], batch['bbox_pred'],
            (batch['labels'], batch['label_weights'].clone(),
             batch['targets'], batch['bbox_weights']), batch['rois'],
            batch['results'])


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('class_specific,five', [(True, True),
                                                 (False, False)])
@pytest.mark.parametrize('k,bias', [(2, 0), (1.5, 0.3)])
def test_isr_p_equals_mmdet(mmdet_losses, coder, seed, class_specific,
                            five, k, bias):
    batch = roi_batch(coder, seed, class_specific=class_specific, five=five)
    for loss_cls in (mmdet_losses.CrossEntropyLoss(),
                     mmloss.CrossEntropyLoss(),
                     mmdet_losses.FocalLoss(use_sigmoid=True)):
        want = mmdet_losses.isr_p(*isr_inputs(batch), loss_cls, coder, k=k,
                                  bias=bias, num_class=NUM_CLASSES)
        before = batch['label_weights'].clone()
        inputs = isr_inputs(batch)
        got = isr_p(*inputs, loss_cls, coder, k=k, bias=bias,
                    num_class=NUM_CLASSES)
        assert torch.equal(inputs[2][1], before)  # not changed in place
        assert torch.equal(got[0], want[0])
        assert_close(got[1], want[1], what='label_weights')
        assert got[2] is want[2] or torch.equal(got[2], want[2])
        # the re-weighting is not the identity on these inputs
        assert not torch.allclose(got[1], before)


def test_isr_p_without_positives_returns_the_targets(coder):
    batch = roi_batch(coder, 0)
    batch['labels'][:] = NUM_CLASSES
    inputs = isr_inputs(batch)
    got = isr_p(*inputs, mmloss.CrossEntropyLoss(), coder,
                num_class=NUM_CLASSES)
    assert all(a is b for a, b in zip(got, inputs[2]))


@pytest.mark.parametrize('seed', [0, 1])
@pytest.mark.parametrize('sigmoid', [False, True])
@pytest.mark.parametrize('avg_factor', [None, 7.0])
def test_carl_loss_equals_mmdet(mmdet_losses, coder, seed, sigmoid,
                                avg_factor):
    batch = roi_batch(coder, seed)
    for class_specific in (True, False):
        bbox_pred = batch['bbox_pred'] if class_specific else \
            batch['bbox_pred'][:, :4].contiguous()
        results = []
        for function in (mmdet_losses.carl_loss, carl_loss):
            score = batch['cls_score'].clone().requires_grad_()
            deltas = bbox_pred.clone().requires_grad_()
            out = function(score, batch['labels'], deltas,
                           batch['targets'],
                           mmdet_losses.SmoothL1Loss(beta=1.0), k=1.5,
                           bias=0.2, avg_factor=avg_factor,
                           sigmoid=sigmoid, num_class=NUM_CLASSES)
            out['loss_carl'].sum().backward()
            results.append((out['loss_carl'], score.grad, deltas.grad))
        (want, want_score, want_delta), (got, score, delta) = results
        assert got.shape == want.shape == (1, )
        assert_close(got, want, what='loss_carl')
        assert_close(score, want_score, what='cls grad')
        assert_close(delta, want_delta, what='bbox grad')
        assert want_score.abs().sum() > 0  # the classifier gets a gradient


def test_carl_loss_edge_cases(coder):
    batch = roi_batch(coder, 1)
    labels = torch.full_like(batch['labels'], NUM_CLASSES)
    score = batch['cls_score'].clone().requires_grad_()
    deltas = batch['bbox_pred'].clone().requires_grad_()
    out = carl_loss(score, labels, deltas, batch['targets'],
                    mmloss.SmoothL1Loss(), num_class=NUM_CLASSES)
    assert out['loss_carl'].shape == (1, ) and out['loss_carl'].item() == 0
    out['loss_carl'].sum().backward()
    assert score.grad is not None and deltas.grad is not None
    # per-box regression losses (IoU family) are weighted per box
    boxes = random_boxes(6, torch.Generator().manual_seed(0), 50.0)
    pred = jitter_boxes(boxes, torch.Generator().manual_seed(1), 0.2)
    scores = torch.randn(6, 3)
    got = carl_loss(scores, torch.tensor([0, 1, 2, 0, 3, 3]), pred, boxes,
                    mmloss.GIoULoss(), num_class=3)['loss_carl']
    per_box = mmloss.GIoULoss()(pred, boxes, reduction_override='none')
    own = scores.softmax(-1)[torch.arange(4), torch.tensor([0, 1, 2, 0])]
    weight = 0.2 + 0.8 * own
    weight = weight * 4 / weight.sum()
    assert_close(got[0], (per_box[:4] * weight).sum() / 6)
    # half inputs: float32 result
    half = carl_loss(score.detach().half(), batch['labels'],
                     deltas.detach().half(), batch['targets'].half(),
                     mmloss.SmoothL1Loss(), num_class=NUM_CLASSES)
    assert half['loss_carl'].dtype == torch.float32
    assert torch.isfinite(half['loss_carl']).all()


def test_rank_within_groups():
    key = torch.tensor([0.3, 0.9, 0.1, 0.5, 0.7, 0.2])
    groups = torch.tensor([1, 0, 1, 1, 0, 2])
    assert rank_within_groups(key, groups).tolist() == [1, 0, 2, 0, 1, 0]


def test_invalid_inputs_name_the_function(coder):
    batch = roi_batch(coder, 0)
    with pytest.raises(ValueError, match=r'carl_loss: .*bbox_targets'):
        carl_loss(batch['cls_score'], batch['labels'], batch['bbox_pred'],
                  batch['targets'][:3], mmloss.SmoothL1Loss())
    with pytest.raises(TypeError, match='carl_loss: labels'):
        carl_loss(batch['cls_score'], batch['labels'].float(),
                  batch['bbox_pred'], batch['targets'],
                  mmloss.SmoothL1Loss())
    inputs = list(isr_inputs(batch))
    inputs[4] = inputs[4][:1]
    with pytest.raises(ValueError, match='isr_p: sampling_results assign'):
        isr_p(*inputs, mmloss.CrossEntropyLoss(), coder,
              num_class=NUM_CLASSES)
    inputs = list(isr_inputs(batch))
    inputs[3] = inputs[3][:, :3]
    with pytest.raises(ValueError, match=r'isr_p: .*rois'):
        isr_p(*inputs, mmloss.CrossEntropyLoss(), coder,
              num_class=NUM_CLASSES)
