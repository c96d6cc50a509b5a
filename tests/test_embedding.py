"""AssociativeEmbeddingLoss: parity with MMDetection 3.3 (values and
gradients, and inside CornerHead), edge cases and input errors."""
import pytest
import torch

import mmloss
from mmloss.functional import associative_embedding_loss
from mmloss.registry import MODELS
from tests.helpers import assert_close


def random_match(generator, batch, height, width, most=6):
    """CornerHead-style ``match``: per image up to ``most`` objects, each
    ``[[tl_y, tl_x], [br_y, br_x]]`` of Python ints."""
    counts = torch.randint(0, most + 1, (batch, ), generator=generator)
    match = []
    for count in counts.tolist():
        ys = torch.randint(0, height, (count, 2), generator=generator)
        xs = torch.randint(0, width, (count, 2), generator=generator)
        match.append([[[ys[k, 0].item(), xs[k, 0].item()],
                       [ys[k, 1].item(), xs[k, 1].item()]]
                      for k in range(count)])
    return match


def both(loss_ours, loss_theirs, tl, br, match):
    """(pull, push) and the gradients of pull + 3 push, ours and mmdet's."""
    results = []
    for loss in (loss_ours, loss_theirs):
        a = tl.detach().clone().requires_grad_()
        b = br.detach().clone().requires_grad_()
        pull, push = loss(a, b, match)
        pull, push = torch.as_tensor(pull), torch.as_tensor(push)
        grads = torch.autograd.grad(pull + 3 * push, (a, b),
                                    allow_unused=True)
        grads = [torch.zeros_like(a) if g is None else g for g in grads]
        results.append((pull.detach(), push.detach(), *grads))
    return results


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('shape', [(2, 1, 16, 16), (3, 4, 9, 13),
                                   (5, 1, 32, 32)])
def test_matches_mmdet_values_and_gradients(mmdet_losses, seed, shape):
    generator = torch.Generator().manual_seed(seed)
    tl = torch.randn(shape, generator=generator) * 2
    br = torch.randn(shape, generator=generator) * 2
    match = random_match(generator, shape[0], *shape[2:])
    cfg = dict(pull_weight=0.25 + seed / 10, push_weight=0.5)
    ours, theirs = both(mmloss.AssociativeEmbeddingLoss(**cfg),
                        mmdet_losses.AssociativeEmbeddingLoss(**cfg),
                        tl, br, match)
    for got, want, what in zip(ours, theirs,
                               ('pull', 'push', 'grad tl', 'grad br')):
        assert_close(got, want, rtol=1e-5, atol=1e-6, what=what)


def test_one_and_no_objects_per_image_match_mmdet(mmdet_losses):
    # image 0: none (both terms 0), image 1: one (push 0), image 2: two
    generator = torch.Generator().manual_seed(3)
    tl = torch.randn(3, 2, 6, 6, generator=generator)
    br = torch.randn(3, 2, 6, 6, generator=generator)
    match = [[], [[[1, 1], [4, 5]]], [[[0, 0], [5, 5]], [[2, 3], [3, 4]]]]
    ours, theirs = both(mmloss.AssociativeEmbeddingLoss(),
                        mmdet_losses.AssociativeEmbeddingLoss(), tl, br,
                        match)
    for got, want in zip(ours, theirs):
        assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert ours[1] > 0  # the two objects of image 2 push


def test_hand_computed_case():
    # one image, C = 1, two objects: e_t = (0, 2), e_b = (1, 2.5)
    tl = torch.zeros(1, 1, 2, 2)
    br = torch.zeros(1, 1, 2, 2)
    tl[0, 0, 0, 0], tl[0, 0, 1, 1] = 0.0, 2.0
    br[0, 0, 0, 1], br[0, 0, 1, 0] = 1.0, 2.5
    match = [[[[0, 0], [0, 1]], [[1, 1], [1, 0]]]]
    pull, push = associative_embedding_loss(tl, br, match, 1.0, 1.0)
    # means 0.5 and 2.25; pull = (2 * 0.25 + 2 * 0.0625) / 2
    assert_close(pull, torch.tensor(0.3125))
    # |0.5 - 2.25| = 1.75 > margin 1: no push
    assert push.item() == 0.0
    match[0][1] = [[1, 1], [0, 0]]  # second object: e_t = 2, e_b = 0
    pull, push = associative_embedding_loss(tl, br, match, 1.0, 1.0)
    # means 0.5 and 1.0: relu(1 - 0.5) for both ordered pairs / (2 * 1)
    assert_close(push, torch.tensor(0.5))


def test_builds_from_mmdet_registry_with_mmdet_arguments():
    from mmdet.registry import MODELS as MMDET_MODELS
    loss = MMDET_MODELS.build(dict(type='mmloss.AssociativeEmbeddingLoss',
                                   pull_weight=0.1, push_weight=0.2))
    assert isinstance(loss, mmloss.AssociativeEmbeddingLoss)
    assert (loss.pull_weight, loss.push_weight) == (0.1, 0.2)
    assert issubclass(MODELS.get('AssociativeEmbeddingLoss'),
                      mmloss.AssociativeEmbeddingLoss)


@pytest.mark.parametrize('match,batch', [([], 0), ([[], []], 2)])
def test_no_objects_give_connected_zeros(match, batch):
    tl = torch.randn(batch, 1, 4, 4, requires_grad=True)
    br = torch.randn(batch, 1, 4, 4, requires_grad=True)
    pull, push = mmloss.AssociativeEmbeddingLoss()(tl, br, match)
    assert pull.item() == 0.0 and push.item() == 0.0
    (pull + push).backward()
    assert tl.grad is not None and (tl.grad == 0).all()
    assert br.grad is not None and (br.grad == 0).all()


def test_zero_weights_give_zero():
    tl = torch.randn(1, 1, 4, 4, requires_grad=True)
    match = [[[[0, 0], [3, 3]], [[1, 1], [2, 2]]]]
    pull, push = mmloss.AssociativeEmbeddingLoss(0.0, 0.0)(tl, tl * 2, match)
    assert pull.item() == 0.0 and push.item() == 0.0


def test_padded_slots_pass_no_gradient_even_through_inf():
    # image 1 has fewer objects: its padded slots point at position 0,
    # which holds inf; neither the value nor the gradient may see it
    tl = torch.randn(2, 1, 4, 4)
    tl[1, 0, 0, 0] = float('inf')
    tl.requires_grad_()
    br = torch.randn(2, 1, 4, 4, requires_grad=True)
    match = [[[[1, 1], [2, 2]], [[0, 1], [3, 3]], [[1, 2], [3, 2]]],
             [[[2, 1], [3, 1]]]]
    pull, push = mmloss.AssociativeEmbeddingLoss()(tl, br, match)
    (pull + push).backward()
    assert torch.isfinite(pull) and torch.isfinite(push)
    assert torch.isfinite(tl.grad).all() and torch.isfinite(br.grad).all()


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_inputs_give_float32_terms(dtype):
    generator = torch.Generator().manual_seed(1)
    tl = torch.randn(2, 1, 8, 8, generator=generator)
    br = torch.randn(2, 1, 8, 8, generator=generator)
    match = random_match(generator, 2, 8, 8)
    ref = mmloss.AssociativeEmbeddingLoss()(tl.to(dtype).float(),
                                           br.to(dtype).float(), match)
    half = tl.to(dtype).requires_grad_()
    out = mmloss.AssociativeEmbeddingLoss()(half, br.to(dtype), match)
    assert all(term.dtype == torch.float32 for term in out)
    for got, want in zip(out, ref):
        assert_close(got, want, rtol=1e-6, atol=1e-7)
    sum(out).backward()
    assert half.grad.dtype == dtype


def test_invalid_inputs_raise_naming_the_loss():
    loss = mmloss.AssociativeEmbeddingLoss()
    tl = torch.randn(2, 1, 4, 5)
    with pytest.raises(ValueError, match=r'AssociativeEmbeddingLoss: pred '
                       r'has shape \(2, 1, 4, 5\) but target has shape'):
        loss(tl, torch.randn(2, 1, 4, 4), [[], []])
    with pytest.raises(ValueError, match=r'\(B, C, H, W\).*\(2, 20\)'):
        loss(torch.randn(2, 20), torch.randn(2, 20), [[], []])
    with pytest.raises(ValueError, match=r'each of the 2 images.*got 1'):
        loss(tl, tl, [[]])
    with pytest.raises(ValueError,
                       match=r'match\[1\]\[0\] = \[\[4, 0\], \[1, 1\]\] '
                       r'lies outside .* \(4, 5\)'):
        loss(tl, tl, [[], [[[4, 0], [1, 1]]]])
    with pytest.raises(ValueError, match=r'outside'):
        loss(tl, tl, [[[[0, -1], [1, 1]]], []])  # mmdet would wrap around
    with pytest.raises(ValueError, match=r'match\[0\] must be a list'):
        loss(tl, tl, [[[0, 1, 2]], []])
    with pytest.raises(TypeError, match=r'AssociativeEmbeddingLoss: pred '
                       r'must be a floating point tensor'):
        loss(tl.long(), tl.long(), [[], []])
    with pytest.raises(ValueError, match=r'pull_weight must be a number'):
        mmloss.AssociativeEmbeddingLoss(pull_weight=-1)


def test_match_may_hold_tensors():
    tl = torch.randn(1, 1, 4, 4)
    listed = [[[[0, 1], [2, 3]], [[1, 1], [3, 3]]]]
    tensors = [torch.tensor(listed[0])]
    assert_close(torch.stack(associative_embedding_loss(tl, tl * 2,
                                                        tensors)),
                 torch.stack(associative_embedding_loss(tl, tl * 2, listed)),
                 rtol=0, atol=0)


# ---------------------------------------------------------------------------
# inside MMDetection's CornerHead
# ---------------------------------------------------------------------------
def corner_head(loss_embedding):
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    return MMDET_MODELS.build(
        dict(type='CornerHead', num_classes=3, in_channels=8,
             num_feat_levels=2, corner_emb_channels=1,
             loss_embedding=loss_embedding))


def test_corner_head_losses_equal_mmdet(mmdet_losses):
    from mmengine.structures import InstanceData
    theirs = corner_head(dict(type='AssociativeEmbeddingLoss',
                              pull_weight=0.25, push_weight=0.25))
    ours = corner_head(dict(type='mmloss.AssociativeEmbeddingLoss',
                            pull_weight=0.25, push_weight=0.25))
    assert isinstance(ours.loss_embedding, mmloss.AssociativeEmbeddingLoss)
    generator = torch.Generator().manual_seed(0)
    batch, size, stride = 2, 16, 4
    gts = []
    for count in (3, 1):
        xy = torch.rand(count, 2, generator=generator) * 40
        wh = torch.rand(count, 2, generator=generator) * 20 + 4
        gts.append(InstanceData(bboxes=torch.cat([xy, xy + wh], 1),
                                labels=torch.randint(0, 3, (count, ),
                                                     generator=generator)))
    metas = [dict(batch_input_shape=(size * stride, size * stride),
                  pad_shape=(size * stride, size * stride, 3),
                  img_shape=(size * stride, size * stride, 3),
                  border=(0, 0, 0, 0))] * batch

    def maps(channels):
        return [torch.randn(batch, channels, size, size, generator=generator)
                for _ in range(2)]

    feats = [maps(3), maps(3), maps(1), maps(1), maps(2), maps(2)]
    results = []
    for head in (theirs, ours):
        leaves = [[m.clone().requires_grad_() for m in level]
                  for level in feats]
        losses = head.loss_by_feat(*leaves, gts, metas)
        terms = {k: torch.stack(v) for k, v in losses.items()}
        embedding = leaves[2] + leaves[3]
        total = sum(terms['pull_loss']) + 2 * sum(terms['push_loss'])
        grads = torch.autograd.grad(total, embedding)
        results.append((terms, grads))
    (want, want_grads), (got, got_grads) = results
    assert set(got) == set(want)
    for key in want:
        assert_close(got[key], want[key], rtol=1e-5, atol=1e-7, what=key)
    assert want['pull_loss'].abs().sum() > 0
    for got_grad, want_grad in zip(got_grads, want_grads):
        assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-7,
                     what='embedding gradient')
