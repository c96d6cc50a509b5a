"""Tracking and ReID embedding losses: MultiPosCrossEntropyLoss, L2Loss,
MarginL2Loss and TripletLoss against MMDetection 3.3 (values and
gradients, every reduction, weight and avg_factor where mmdet has them),
edge cases, input errors, and QDTrack's QuasiDenseEmbedHead."""
import warnings
from types import SimpleNamespace

import pytest
import torch

import mmloss
from mmloss.functional import (margin_l2_loss, multi_pos_cross_entropy,
                               triplet_loss)
from tests.helpers import assert_close

REDUCTIONS = ('mean', 'sum', 'none')


def value_and_grad(loss, pred, *args, **kwargs):
    """A loss of a fresh leaf copy of ``pred`` and its gradient (of the
    sum, for 'none')."""
    leaf = pred.detach().clone().requires_grad_()
    out = loss(leaf * 1, *args, **kwargs)  # mmdet writes into its input
    grad, = torch.autograd.grad(out.sum(), leaf)
    return out.detach(), grad


def similarities(seed, rows=7, cols=11, positives=0.3):
    generator = torch.Generator().manual_seed(seed)
    pred = torch.rand(rows, cols, generator=generator) * 2.2 - 1.1
    target = (torch.rand(rows, cols, generator=generator)
              < positives).int()
    return generator, pred, target


# ---------------------------------------------------------------------------
# MultiPosCrossEntropyLoss
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('seed', range(3))
@pytest.mark.parametrize('shape', [(1, 5), (8, 13), (30, 64)])
@pytest.mark.parametrize('reduction', REDUCTIONS)
def test_multi_pos_matches_mmdet(mmdet_losses, seed, shape, reduction):
    generator, pred, label = similarities(seed, *shape)
    pred = pred * 5
    label[0] = 0  # a row without positives
    if shape[0] > 1:
        label[1] = 1  # and one without negatives
    weight = torch.rand(shape[0], generator=generator)
    cfg = dict(loss_weight=0.25)
    for kwargs in (dict(), dict(weight=weight),
                   dict(weight=weight, avg_factor=weight.sum())):
        if reduction == 'sum' and 'avg_factor' in kwargs:
            continue
        got = value_and_grad(mmloss.MultiPosCrossEntropyLoss(**cfg), pred,
                             label, reduction_override=reduction, **kwargs)
        want = value_and_grad(mmdet_losses.MultiPosCrossEntropyLoss(**cfg),
                              pred, label, reduction_override=reduction,
                              **kwargs)
        for g, w, what in zip(got, want, ('value', 'grad')):
            assert_close(g, w, rtol=1e-5, atol=1e-6,
                         what=f'{reduction} {sorted(kwargs)} {what}')


def test_multi_pos_hand_computed_and_degenerate_rows():
    pred = torch.tensor([[2.0, 0.5, -1.0], [1.0, 1.0, 1.0],
                         [3.0, -3.0, 0.0]])
    label = torch.tensor([[1, 0, 0], [0, 0, 0], [1, 2, 1]])
    out = multi_pos_cross_entropy(pred, label, reduction='none')
    expected = torch.log1p(torch.exp(torch.tensor(0.5 - 2.0)) +
                           torch.exp(torch.tensor(-1.0 - 2.0)))
    assert_close(out[0], expected)
    assert out[1].item() == 0.0 and out[2].item() == 0.0


def test_multi_pos_ignores_labels_that_are_neither_0_nor_positive():
    # mmdet counts a label -1 as a positive and a negative of similarity 0;
    # here it is ignored: the row equals the row without that column
    pred = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    label = torch.tensor([[1, 0, 0, -1, 0, 1]] * 4)
    out = multi_pos_cross_entropy(pred, label, reduction='none')
    keep = [0, 1, 2, 4, 5]
    ref = multi_pos_cross_entropy(pred[:, keep], label[:, keep],
                                  reduction='none')
    assert_close(out, ref, rtol=0, atol=0)


def test_multi_pos_large_logits_stay_finite():
    # mmdet's pairwise sum is as stable (logsumexp); the factored form too
    pred = torch.tensor([[300.0, -300.0, 200.0]], requires_grad=True)
    out = multi_pos_cross_entropy(pred, torch.tensor([[0, 1, 1]]))
    out.backward()
    assert_close(out, torch.tensor(600.0))
    assert torch.isfinite(pred.grad).all()


# ---------------------------------------------------------------------------
# L2Loss / MarginL2Loss
# ---------------------------------------------------------------------------
QDTRACK_AUX = dict(neg_pos_ub=3, pos_margin=0, neg_margin=0.1,
                   hard_mining=True)
L2_CONFIGS = [dict(), dict(pos_margin=0.2, neg_margin=0.3), QDTRACK_AUX,
              dict(QDTRACK_AUX, pos_margin=0.1, loss_weight=2.0)]


@pytest.mark.parametrize('name', ['L2Loss', 'MarginL2Loss'])
@pytest.mark.parametrize('cfg', L2_CONFIGS, ids=str)
@pytest.mark.parametrize('seed', range(3))
@pytest.mark.parametrize('reduction', ['mean', 'none'])
def test_l2_matches_mmdet(mmdet_losses, name, cfg, seed, reduction):
    generator, pred, target = similarities(seed, 9, 40, positives=0.1)
    for weight in (None, (torch.rand(9, 40, generator=generator) > 0.2
                          ).float()):
        kwargs = dict(reduction_override=reduction)
        theirs_weight = None if weight is None else weight.clone()
        want = value_and_grad(getattr(mmdet_losses, name)(**cfg), pred,
                              target.clone(), theirs_weight, **kwargs)
        target_before = target.clone()
        got = value_and_grad(getattr(mmloss, name)(**cfg), pred, target,
                             weight, **kwargs)
        assert torch.equal(target, target_before)  # never written into
        for g, w, what in zip(got, want, ('value', 'grad')):
            assert_close(g, w, rtol=1e-5, atol=1e-7,
                         what=f'{name} {cfg} {what}')


def test_l2_hard_mining_keeps_the_hardest_negatives():
    pred = torch.tensor([[0.9, 0.2, 0.8, 0.1, 0.5, 0.3, 0.05]])
    target = torch.tensor([[1, 0, 0, 0, 0, 0, 0]])
    out = margin_l2_loss(pred, target, reduction='none', neg_pos_ub=2,
                         hard_mining=True)
    # one positive, bound 2: the negatives 0.8 and 0.5 keep their weight
    kept = torch.tensor([[1, 0, 1, 0, 1, 0, 0]], dtype=torch.bool)
    assert_close(out, torch.where(kept, (pred - target)**2, 0.0))
    mean = margin_l2_loss(pred, target, neg_pos_ub=2, hard_mining=True)
    assert_close(mean, out.sum() / 3)


def test_l2_random_sampling_keeps_the_bound(mmdet_losses):
    # random draws differ from mmdet's (NumPy's generator): the number kept,
    # hence mmdet's mean denominator, agrees
    generator, pred, target = similarities(4, 12, 50, positives=0.05)
    num_pos = int((target == 1).sum())
    torch.manual_seed(0)
    out = margin_l2_loss(pred.clamp(0.01, 0.99), target, reduction='none',
                         neg_pos_ub=3)
    negatives_kept = int(((out > 0) & (target == 0)).sum())
    assert negatives_kept == 3 * num_pos
    assert ((out > 0) | (target == 0)).all()  # every positive kept
    _, weight, avg_factor = mmdet_losses.L2Loss(neg_pos_ub=3).update_weight(
        pred.clone(), target.clone(), None, None)
    assert int(avg_factor) == num_pos + negatives_kept


# the argument forms QDTrack and other callers may pass: mmdet ignores
# avg_factor (any type), takes float or integer targets and weights
L2_FORMS = [
    dict(avg_factor=4.0),
    dict(avg_factor=7),
    dict(avg_factor=torch.tensor(3.0), reduction_override='none'),
    dict(avg_factor=torch.tensor([5.0]), reduction_override='mean'),
    dict(target_dtype=torch.int64),
    dict(target_dtype=torch.int32, weight_dtype=torch.int64),
]


@pytest.mark.parametrize('name', ['L2Loss', 'MarginL2Loss'])
@pytest.mark.parametrize('form', range(len(L2_FORMS)))
def test_l2_argument_forms_match_mmdet(mmdet_losses, name, form):
    kwargs = dict(L2_FORMS[form])
    target_dtype = kwargs.pop('target_dtype', torch.float32)
    weight_dtype = kwargs.pop('weight_dtype', torch.float32)
    generator, pred, target = similarities(form, 9, 40, positives=0.1)
    target = target.to(target_dtype)
    weight = (torch.rand(9, 40, generator=generator) > 0.2).to(weight_dtype)
    want = value_and_grad(getattr(mmdet_losses, name)(**QDTRACK_AUX), pred,
                          target.clone(), weight.clone(), **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        got = value_and_grad(getattr(mmloss, name)(**QDTRACK_AUX), pred,
                             target, weight, **kwargs)
    for g, w, what in zip(got, want, ('value', 'grad')):
        assert g.shape == w.shape
        assert_close(g, w, rtol=1e-5, atol=1e-7,
                     what=f'{name} {L2_FORMS[form]} {what}')


@pytest.mark.parametrize('name', ['L2Loss', 'MarginL2Loss'])
def test_l2_ignores_avg_factor_and_refuses_sum_as_mmdet(mmdet_losses, name):
    _, pred, target = similarities(5)
    loss = getattr(mmloss, name)(**QDTRACK_AUX)
    mean = loss(pred, target)
    # mmdet replaces a passed avg_factor by its count: the value does not
    # move, and one warning says the argument is ignored
    with pytest.warns(UserWarning, match=f'{name}: avg_factor=4.0 is '
                      'ignored'):
        assert_close(loss(pred, target, avg_factor=4.0), mean)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        loss(pred, target, avg_factor=4.0)  # once per module
        loss(pred, target)  # none without an avg_factor
    # mmdet raises for 'sum' (it always passes an avg_factor): so do we
    for module, override in ((loss, 'sum'),
                             (getattr(mmloss, name)(reduction='sum'), None)):
        with pytest.raises(Exception):
            getattr(mmdet_losses, name)()(pred.clone(), target.clone(),
                                          reduction_override='sum')
        with pytest.raises(ValueError, match=f'{name}: reduction "sum"'):
            module(pred, target, reduction_override=override)
    # the functional form takes both
    none = margin_l2_loss(pred, target, reduction='none', **QDTRACK_AUX)
    assert_close(margin_l2_loss(pred, target, reduction='sum',
                                **QDTRACK_AUX), none.sum())
    assert_close(margin_l2_loss(pred, target, avg_factor=4.0,
                                **QDTRACK_AUX), none.sum() / 4, rtol=1e-6)


def test_l2_differences_from_mmdet_are_the_sensible_values():
    _, pred, target = similarities(5)
    # a leaf prediction works (mmdet subtracts its margins in place)
    leaf = pred.clone().requires_grad_()
    mmloss.MarginL2Loss(pos_margin=0.1)(leaf, target).backward()
    assert leaf.grad is not None


@pytest.mark.parametrize('name', ['L2Loss', 'MarginL2Loss'])
def test_l2_edge_cases(name):
    loss = getattr(mmloss, name)(**QDTRACK_AUX)
    empty = torch.zeros(0, 5, requires_grad=True)
    out = loss(empty, torch.zeros(0, 5, dtype=torch.int))
    assert out.item() == 0.0
    out.backward()
    assert empty.grad.shape == empty.shape
    _, pred, target = similarities(6)
    leaf = pred.clone().requires_grad_()
    out = loss(leaf, target, torch.zeros_like(pred))
    assert out.item() == 0.0
    grad, = torch.autograd.grad(out, leaf)
    assert (grad == 0).all()
    half = loss(pred.half(), target)
    assert half.dtype == torch.float32
    assert_close(half, loss(pred.half().float(), target), rtol=1e-6)


# ---------------------------------------------------------------------------
# TripletLoss
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('batch,dim,per_id', [(8, 4, 2), (24, 32, 4),
                                              (64, 128, 8)])
def test_triplet_matches_mmdet(mmdet_losses, seed, batch, dim, per_id):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, dim, generator=generator)
    identities = torch.randperm(batch, generator=generator) // per_id
    cfg = dict(margin=0.3 + seed / 10, loss_weight=1.5)
    got = value_and_grad(mmloss.TripletLoss(**cfg), features, identities)
    want = value_and_grad(mmdet_losses.TripletLoss(**cfg), features,
                          identities)
    for g, w, what in zip(got, want, ('value', 'grad')):
        assert_close(g, w, rtol=1e-5, atol=1e-6, what=what)


def test_triplet_hand_computed():
    features = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0],
                             [0.0, 2.0]])
    identities = torch.tensor([0, 0, 1, 1])
    # anchor 0: furthest positive 5, nearest negative 1 -> 5 - 1 + 1 = 5
    # anchor 1: 5, min(|(2, 4)|, |(3, 2)|) = sqrt(13)
    # anchor 2: sqrt(5), 1; anchor 3: sqrt(5), 2
    out = triplet_loss(features, identities, margin=1.0, reduction='none')
    s5, s13 = 5**0.5, 13**0.5
    assert_close(out, torch.tensor([5.0, 6 - s13, s5, s5 - 1]))


def test_triplet_edge_cases():
    loss = mmloss.TripletLoss()
    # one identity: no anchor has a negative (mmdet raises): a zero
    features = torch.randn(4, 3, requires_grad=True)
    out = loss(features, torch.zeros(4, dtype=torch.long))
    assert out.item() == 0.0
    out.backward()
    assert (features.grad == 0).all()
    # the mean is over the anchors that have a negative
    features = torch.tensor([[0.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    identities = torch.tensor([0, 0, 1])
    per_anchor = triplet_loss(features, identities, reduction='none')
    assert_close(loss(features, identities), per_anchor.sum() / 3)
    empty = torch.zeros(0, 3, requires_grad=True)
    out = loss(empty, torch.zeros(0, dtype=torch.long))
    assert out.item() == 0.0
    out.backward()
    assert empty.grad.shape == empty.shape
    half = loss(torch.randn(6, 4).half(), torch.arange(6) // 2)
    assert half.dtype == torch.float32 and torch.isfinite(half)


def test_triplet_singleton_identity_uses_the_exact_self_distance():
    # mmdet's |a|^2 + |a|^2 - 2 a.a leaves round-off as the distance of an
    # anchor to itself; here it is exactly sqrt(1e-12)
    features = torch.tensor([[10.0, 10.0], [10.1, 10.0], [0.0, 0.0]])
    out = triplet_loss(features, torch.tensor([0, 1, 1]), margin=20.0,
                       reduction='none')
    assert_close(out[0], 1e-6 - (features[0] - features[1]).norm() + 20.0)


# ---------------------------------------------------------------------------
# input errors and construction
# ---------------------------------------------------------------------------
def test_invalid_inputs_raise_naming_the_loss():
    pred = torch.rand(3, 4)
    with pytest.raises(ValueError, match=r'MultiPosCrossEntropyLoss: pred '
                       r'has shape \(3, 4\) but label has shape \(3, 5\)'):
        mmloss.MultiPosCrossEntropyLoss()(pred, torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r'MultiPosCrossEntropyLoss: pred '
                       r'must have shape \(N, M\).*\(12,\)'):
        mmloss.MultiPosCrossEntropyLoss()(pred.view(-1), torch.zeros(12))
    with pytest.raises(ValueError, match=r'MultiPosCrossEntropyLoss: weight '
                       r'has shape \(4,\).*\(3,\)'):
        mmloss.MultiPosCrossEntropyLoss()(pred, torch.zeros(3, 4),
                                          torch.ones(4))
    with pytest.raises(ValueError, match=r'MarginL2Loss: pred has shape '
                       r'\(3, 4\) but target has shape \(4, 3\)'):
        mmloss.MarginL2Loss()(pred, torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r'L2Loss: reduction_override'):
        mmloss.L2Loss()(pred, torch.zeros(3, 4), reduction_override='max')
    with pytest.raises(ValueError, match=r'L2Loss: reduction "sum"'):
        mmloss.L2Loss(reduction='sum')(pred, torch.zeros(3, 4),
                                       avg_factor=2.0)
    with pytest.raises(TypeError, match=r'L2Loss: pred must be a floating'):
        mmloss.L2Loss()(torch.zeros(3, 4, dtype=torch.int),
                        torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r'TripletLoss: inputs must have '
                       r'shape \(B, D\) and targets shape \(B,\), but got '
                       r'\(3, 4\) and \(4,\)'):
        mmloss.TripletLoss()(pred, torch.arange(4))
    unmined = mmloss.TripletLoss(hard_mining=False)  # builds, as in mmdet
    with pytest.raises(NotImplementedError, match=r'TripletLoss: '
                       r'hard_mining=False'):
        unmined(torch.randn(4, 3), torch.arange(4))
    with pytest.raises(ValueError, match=r'MarginL2Loss: neg_margin must be '
                       r'a number'):
        mmloss.MarginL2Loss(neg_margin='0.1')


@pytest.mark.parametrize('name,cfg', [
    ('MultiPosCrossEntropyLoss', dict(loss_weight=0.25)),
    ('MarginL2Loss', QDTRACK_AUX), ('L2Loss', dict()),
    ('TripletLoss', dict(margin=0.3, loss_weight=1.0))])
def test_builds_from_mmdet_configs(name, cfg):
    from mmdet.registry import MODELS as MMDET_MODELS
    loss = MMDET_MODELS.build(dict(type=f'mmloss.{name}', **cfg))
    assert isinstance(loss, getattr(mmloss, name))
    for key, value in cfg.items():
        assert getattr(loss, key) == value


# ---------------------------------------------------------------------------
# inside QDTrack's QuasiDenseEmbedHead
# ---------------------------------------------------------------------------
def embed_head(scope):
    heads = pytest.importorskip('mmdet.models.tracking_heads')
    torch.manual_seed(0)
    return heads.QuasiDenseEmbedHead(
        num_convs=1, num_fcs=1, in_channels=4, roi_feat_size=3,
        conv_out_channels=4, fc_out_channels=16, embed_channels=8,
        loss_track=dict(type=f'{scope}MultiPosCrossEntropyLoss',
                        loss_weight=0.25),
        loss_track_aux=dict(type=f'{scope}MarginL2Loss', **QDTRACK_AUX))


def test_quasi_dense_embed_head_losses_equal_mmdet():
    theirs, ours = embed_head(''), embed_head('mmloss.')
    assert isinstance(ours.loss_track, mmloss.MultiPosCrossEntropyLoss)
    assert isinstance(ours.loss_track_aux, mmloss.MarginL2Loss)
    ours.load_state_dict(theirs.state_dict())
    generator = torch.Generator().manual_seed(1)
    key_results, ref_results, match_indices = [], [], []
    for num_key, num_ref, num_gts in ((5, 9, 4), (3, 12, 3)):
        key_results.append(SimpleNamespace(
            pos_bboxes=torch.zeros(num_key, 4),
            pos_assigned_gt_inds=torch.randint(0, num_gts, (num_key, ),
                                               generator=generator)))
        ref_pos = num_ref // 2
        ref_results.append(SimpleNamespace(
            bboxes=torch.zeros(num_ref, 4),
            pos_bboxes=torch.zeros(ref_pos, 4),
            pos_assigned_gt_inds=torch.randint(0, num_gts, (ref_pos, ),
                                               generator=generator)))
        match_indices.append(torch.randperm(num_gts, generator=generator))
    key_feats = torch.randn(8, 4, 3, 3, generator=generator)
    ref_feats = torch.randn(21, 4, 3, 3, generator=generator)
    results = []
    for head in (theirs, ours):
        head.zero_grad()
        losses = head.loss(key_feats, ref_feats, key_results, ref_results,
                           match_indices)
        sum(losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in head.named_parameters()
                 if p.grad is not None}
        results.append((losses, grads))
    (want, want_grads), (got, got_grads) = results
    assert set(got) == set(want) == {'loss_track', 'loss_track_aux'}
    for key in want:
        assert_close(got[key], want[key], rtol=1e-5, atol=1e-7, what=key)
        assert want[key] > 0
    assert set(got_grads) == set(want_grads) and want_grads
    for name in want_grads:
        assert_close(got_grads[name], want_grads[name], rtol=1e-5,
                     atol=1e-7, what=name)
