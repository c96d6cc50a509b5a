"""DDQAuxLoss against MMDetection 3.3's (the dense-query auxiliary loss)."""
import copy

import pytest
import torch

import mmloss
from mmloss.losses.ddq import normalised_alignment_metrics
from tests.helpers import assert_close, jitter_boxes, random_boxes

mmdet_losses = pytest.importorskip('mmdet.models.losses')
from mmdet.utils import register_all_modules  # noqa: E402

register_all_modules()

NUM_CLASSES = 7
CFG = dict(train_cfg=dict(
    assigner=dict(type='TopkHungarianAssigner', topk=4), alpha=1, beta=6))


def dense_batch(seed, gts=(3, 5), queries=60):
    """Dense queries near the ground truths of each image (probabilities
    from logits, boxes in pixels)."""
    g = torch.Generator().manual_seed(seed)
    gt_bboxes = [random_boxes(n, g, 80.0) for n in gts]
    gt_labels = [torch.randint(0, NUM_CLASSES, (n, ), generator=g)
                 for n in gts]
    logits = torch.randn(len(gts), queries, NUM_CLASSES, generator=g)
    boxes = []
    for gt in gt_bboxes:
        if len(gt) == 0:
            boxes.append(random_boxes(queries, g, 80.0))
            continue
        near = gt[torch.randint(0, len(gt), (queries, ), generator=g)]
        boxes.append(jitter_boxes(near, g, 0.5))
    metas = [dict(img_shape=(128, 128))] * len(gts)
    return logits, torch.stack(boxes), gt_bboxes, gt_labels, metas


def run(loss, logits, boxes, *rest):
    x = logits.clone().requires_grad_()
    b = boxes.clone().requires_grad_()
    out = loss.loss(x.sigmoid(), b, *rest)
    total = sum(sum(v * (i + 1) for i, v in enumerate(values))
                for values in out.values())
    total.backward()
    return {k: torch.stack([v.detach() for v in values])
            for k, values in out.items()}, x.grad, b.grad


@pytest.mark.parametrize('seed', [0, 1])
@pytest.mark.parametrize('gts', [(3, 5), (2, 0)])
def test_equals_mmdet(seed, gts):
    ref = mmdet_losses.DDQAuxLoss(**copy.deepcopy(CFG))
    ours = mmloss.DDQAuxLoss(**copy.deepcopy(CFG))
    # the default losses are mmloss's twins, the assigner mmdet's
    assert type(ours.loss_cls).__module__.startswith('mmloss')
    assert type(ours.loss_bbox).__module__.startswith('mmloss')
    batch = dense_batch(seed, gts)
    (want, want_x, want_b), (got, got_x, got_b) = (run(ref, *batch),
                                                   run(ours, *batch))
    assert got.keys() == want.keys() == {'aux_loss_cls', 'aux_loss_bbox'}
    for key in want:
        assert_close(got[key], want[key], what=key)
    assert_close(got_x, want_x, what='score grad')
    assert_close(got_b, want_b, what='box grad')
    assert want['aux_loss_bbox'][0] > 0


def test_targets_equal_mmdet():
    ref = mmdet_losses.DDQAuxLoss(**copy.deepcopy(CFG))
    ours = mmloss.DDQAuxLoss(**copy.deepcopy(CFG))
    logits, boxes, gt_bboxes, gt_labels, metas = dense_batch(3)
    scores = logits.sigmoid()
    want = ref.get_targets(scores, boxes, gt_bboxes, metas,
                           gt_labels_list=gt_labels)
    got = ours.get_targets(scores, boxes, gt_bboxes, metas,
                           gt_labels_list=gt_labels)
    for name, a, b in zip(('labels', 'label_weights', 'bbox_targets',
                           'alignment'), want, got):
        for image_a, image_b in zip(a, b):
            assert_close(image_b, image_a, what=name)


def test_normalised_alignment_metrics_by_hand():
    metrics = torch.tensor([0.2, 0.4, 0.1, 0.3])
    ious = torch.tensor([0.5, 0.8, 0.9, 0.6])
    gt = torch.tensor([0, 0, 1, 1])
    got = normalised_alignment_metrics(metrics, ious, gt, 2)
    want = torch.tensor([0.2 / (0.4 + 1e-7) * 0.8, 0.4 / (0.4 + 1e-7) * 0.8,
                         0.1 / (0.3 + 1e-7) * 0.9, 0.3 / (0.3 + 1e-7) * 0.9])
    assert_close(got, want)


def test_half_precision_and_no_ground_truth():
    ours = mmloss.DDQAuxLoss(**copy.deepcopy(CFG))
    logits, boxes, gt_bboxes, gt_labels, metas = dense_batch(0, (0, 0))
    out, x_grad, b_grad = run(ours, logits, boxes, gt_bboxes, gt_labels,
                              metas)
    assert torch.equal(out['aux_loss_bbox'], torch.zeros(2))
    assert torch.isfinite(out['aux_loss_cls']).all()
    assert b_grad is not None and x_grad is not None
    logits, boxes, gt_bboxes, gt_labels, metas = dense_batch(1)
    x = logits.to(torch.bfloat16).requires_grad_()
    out = ours.loss(x.sigmoid(), boxes.to(torch.bfloat16), gt_bboxes,
                    gt_labels, metas)
    total = sum(sum(v) for v in out.values())
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(x.grad.float()).all()


def test_invalid_inputs_name_the_loss():
    ours = mmloss.DDQAuxLoss(**copy.deepcopy(CFG))
    logits, boxes, gt_bboxes, gt_labels, metas = dense_batch(0)
    with pytest.raises(ValueError, match=r'DDQAuxLoss: .*\(2, 60, 3\)'):
        ours.loss(logits.sigmoid(), boxes[..., :3], gt_bboxes, gt_labels,
                  metas)
    with pytest.raises(ValueError, match='DDQAuxLoss: 2 images'):
        ours.loss(logits.sigmoid(), boxes, gt_bboxes[:1], gt_labels, metas)
    with pytest.raises(TypeError, match='DDQAuxLoss: gt_labels'):
        ours.loss(logits.sigmoid(), boxes, gt_bboxes,
                  [labels.float() for labels in gt_labels], metas)
    with pytest.raises(ValueError, match='DDQAuxLoss: train_cfg'):
        mmloss.DDQAuxLoss(train_cfg=dict(alpha=1))


def test_import_mmloss_builds_no_assigner_until_asked():
    # the class is exported, not registered (as in MMDetection)
    assert 'DDQAuxLoss' not in mmloss.MODELS.module_dict
    assert mmloss.DDQAuxLoss is mmloss.losses.ddq.DDQAuxLoss
