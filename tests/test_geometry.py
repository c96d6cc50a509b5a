"""mmloss.geometry: hand-computed boxes, torchvision-style identities, and
the hand-written backward of the pair primitives against autograd."""
import math

import pytest
import torch

from mmloss import geometry as geo
from tests.helpers import assert_close, random_boxes

# (0, 0, 2, 2) and (1, 1, 3, 3): overlap 1, union 7, enclosing (0, 0, 3, 3)
A = torch.tensor([[0., 0., 2., 2.]], dtype=torch.float64)
B = torch.tensor([[1., 1., 3., 3.]], dtype=torch.float64)


def test_hand_values():
    assert_close(geo.box_area(A), torch.tensor([4.], dtype=torch.float64))
    assert_close(geo.box_wh(B), torch.tensor([[2., 2.]], dtype=torch.float64))
    assert_close(geo.box_centre(B),
                 torch.tensor([[2., 2.]], dtype=torch.float64))
    inter, union = geo.box_inter_union(A, B)
    assert inter.item() == 1 and union.item() == 7
    assert geo.aligned_iou(A, B, eps=0).item() == pytest.approx(1 / 7)
    assert geo.aligned_iou(A, B, eps=1, floor=True).item() == \
        pytest.approx(1 / 7)
    assert_close(geo.enclosing_box(A, B),
                 torch.tensor([[0., 0., 3., 3.]], dtype=torch.float64))
    assert geo.enclosing_area(A, B).item() == 9
    assert geo.enclosing_diagonal_sq(A, B).item() == 18
    assert_close(geo.centre_offset(A, B),
                 torch.tensor([[2., 2.]], dtype=torch.float64))
    assert geo.centre_distance_sq(A, B).item() == 2
    # same aspect ratio -> no aspect term; 1:2 against 1:1
    assert geo.aspect_consistency(A, B).item() == 0
    tall = torch.tensor([[0., 0., 1., 2.]], dtype=torch.float64)
    expected = 4 / math.pi**2 * (math.atan(1) - math.atan(0.5))**2
    assert geo.aspect_consistency(tall, A).item() == pytest.approx(expected)


def test_disjoint_and_inverted():
    far = A + 10
    inter, union = geo.box_inter_union(A, far)
    assert inter.item() == 0 and union.item() == 8
    assert geo.enclosing_area(A, far).item() == 144
    inverted = A[:, [2, 3, 0, 1]]
    # the overlap clamps at zero; the enclosing size never goes negative
    assert geo.box_inter_union(inverted, A)[0].item() == 0
    assert (geo.enclosing_wh(inverted, inverted) >= 0).all()


def test_extended_intersection():
    # equals the intersection for overlapping boxes
    assert geo.extended_intersection(A, B).item() == 1
    # negative (a signed gap term) for disjoint boxes
    assert geo.extended_intersection(A, A + 5).item() < 0


def test_scale_boxes():
    assert_close(geo.scale_boxes(A, 0.5),
                 torch.tensor([[0.5, 0.5, 1.5, 1.5]], dtype=torch.float64))
    assert_close(geo.scale_boxes(B, 1.0), B)


def test_upcast_and_restore():
    half = A.half()
    up, = geo.upcast(half)
    assert up.dtype == torch.float32
    mixed = geo.upcast(A.bfloat16(), A.float())
    assert all(t.dtype == torch.float32 for t in mixed)
    assert geo.upcast(A)[0].dtype == torch.float64
    assert geo.restore_dtype(up, half).dtype == torch.float16
    # a 300 px box overflows float16 once squared, not after upcasting
    big = torch.tensor([[0., 0., 300., 300.]]).half()
    assert torch.isinf(geo.box_area(big)).all()
    assert torch.isfinite(geo.box_area(*geo.upcast(big))).all()


def test_shapes_broadcast_over_leading_dims(generator):
    a = random_boxes(24, generator).view(2, 3, 4, 4)
    b = random_boxes(24, generator).view(2, 3, 4, 4)
    assert geo.aligned_iou(a, b).shape == (2, 3, 4)
    assert_close(geo.aligned_iou(a, b).flatten(),
                 geo.aligned_iou(a.view(-1, 4), b.view(-1, 4)))


@pytest.mark.parametrize('ties', [False, True])
def test_pair_backward_matches_autograd(generator, ties):
    """A weighted sum of every primitive, differentiated both ways."""
    pred = random_boxes(50, generator, dtype=torch.float64)
    target = random_boxes(50, generator, dtype=torch.float64)
    if ties:  # shared corners exercise the half/half tie rule
        target[::2] = pred[::2]
        target[1::4, 0] = pred[1::4, 0]
    weights = [torch.rand(50, 2, generator=generator, dtype=torch.float64)
               for _ in range(5)]
    p = pred.clone().requires_grad_()
    t = target.clone().requires_grad_()
    total = sum((w * f).sum() for w, f in zip(weights, (
        torch.minimum(p[:, 2:], t[:, 2:]) - torch.maximum(p[:, :2], t[:, :2]),
        geo.box_wh(p), geo.box_wh(t),
        torch.maximum(p[:, 2:], t[:, 2:]) - torch.minimum(p[:, :2], t[:, :2]),
        geo.centre_offset(p, t))))
    total.backward()
    grad_p, grad_t = geo.pair_backward(
        pred, target, inter_wh=weights[0], pred_wh=weights[1],
        target_wh=weights[2], enclose_wh=weights[3], offset=weights[4],
        need_target=True)
    assert_close(grad_p, p.grad, rtol=1e-12, atol=1e-12)
    assert_close(grad_t, t.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('n', [1, 10, 4095, 4096, 5000, 70_000])
@pytest.mark.parametrize('autocast', [False, True])
def test_column_and_row_major_are_exact_copies(generator, dtype, n,
                                               autocast):
    """The transposing copies keep every coordinate bit for bit, also
    under bfloat16 autocast and for non-finite coordinates."""
    boxes = random_boxes(n, generator, dtype=dtype) * 1e3 - 7.25 + 1e-3
    boxes[0, 1] = float('inf')
    boxes[-1, 2] = float('-inf')
    boxes[n // 2, 0] = -0.0
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        cols = geo.column_major(boxes)
        assert cols.shape == boxes.shape and cols.stride() == (1, n)
        assert cols.dtype == dtype and torch.equal(cols, boxes)
        rows = geo.row_major(cols)
        assert rows.is_contiguous() and torch.equal(rows, boxes)
        out = torch.full((n + 2, 4), 7.0, dtype=dtype)
        assert geo.row_major(cols, out=out[1:-1]).data_ptr() == \
            out[1:-1].data_ptr()
        assert torch.equal(out[1:-1], boxes)
        assert (out[0] == 7).all() and (out[-1] == 7).all()
    assert torch.equal(torch.signbit(rows), torch.signbit(boxes))


def test_column_and_row_major_use_no_product():
    """No matmul-family op (autocast and TF32 would round through it)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        seen = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Ops.seen.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    boxes = torch.rand(5000, 4)
    with Ops():
        geo.row_major(geo.column_major(boxes))
        geo.row_major(geo.column_major(boxes), out=torch.empty(5000, 4))
    assert not Ops.seen & {'mm', 'bmm', 'matmul', 'addmm', 'einsum', 'dot',
                           'mv', 'linear'}, Ops.seen


def test_column_major_is_differentiable():
    boxes = torch.rand(3000, 4, requires_grad=True)
    cols = geo.column_major(boxes)
    (cols * torch.arange(4.0)).sum().backward()
    assert torch.equal(boxes.grad, torch.arange(4.0).expand(3000, 4))


def test_nonfinite_rows():
    a = torch.tensor([[0., 0., 1., 1.], [0., 0., math.inf, 1.],
                      [3e38, 3e38, 3e38, 3e38], [0., 0., 1., 1.]],
                     requires_grad=True)
    b = torch.tensor([[0., 0., 1., 1.], [0., 0., 1., 1.],
                      [3e38, 3e38, 3e38, 3e38], [math.nan, 0., 1., 1.]])
    rows = geo.nonfinite_rows(a, b)
    # large finite coordinates do not overflow into a NaN (no plain sum)
    assert rows[0].item() == 0 and rows[2].item() == 0
    assert torch.isnan(rows[1]) and torch.isnan(rows[3])
    assert not rows.requires_grad
    for buffer in (True, False):
        assert torch.isnan(geo.nonfinite_rows(a, b, total=True,
                                              buffer=buffer)), buffer
        for finite in ([0, 2], [0]):
            total = geo.nonfinite_rows(a[finite], b[finite], total=True,
                                       buffer=buffer)
            assert total.item() == 0 and not total.requires_grad, buffer
        for bad in (1, 3):  # the Inf in a, the NaN in b
            assert torch.isnan(geo.nonfinite_rows(
                a[[0, bad]], b[[0, bad]], total=True, buffer=buffer))
        empty = geo.nonfinite_rows(a[:0], b[:0], total=True, buffer=buffer)
        assert empty.item() == 0 and empty.dim() == 0, buffer
    # an Inf only in the second input, either sign, every float dtype (its
    # zero multiple is what flags it)
    for dtype in (torch.float16, torch.bfloat16, torch.float32,
                  torch.float64):
        ones = torch.ones(3, 4, dtype=dtype)
        other = ones.clone()
        other[1, 2], other[2, 0] = math.inf, -math.inf
        rows = geo.nonfinite_rows(ones, other)
        assert rows[0].item() == 0, dtype
        assert torch.isnan(rows[1:]).all(), dtype
        for buffer in (True, False):
            for bad in (1, 2):
                assert torch.isnan(geo.nonfinite_rows(
                    ones[[0, bad]], other[[0, bad]], total=True,
                    buffer=buffer)), (dtype, buffer, bad)
            assert geo.nonfinite_rows(ones[:1], other[:1], total=True,
                                      buffer=buffer).item() == 0, dtype
