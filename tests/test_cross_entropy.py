"""CrossEntropyLoss / CrossEntropyCustomLoss against MMDetection 3.3."""
import dataclasses
import warnings

import pytest
import torch

import mmloss
from mmloss.engine import dispatch
from mmloss.engine.functions import (GradientInForward,
                                     gradient_from_output)
from mmloss.losses import cross_entropy as ce_module
from mmloss.losses import cross_entropy_kernels as ce_kernels
from mmloss.losses.cross_entropy import (accurate_neg_log,
                                         binary_cross_entropy,
                                         mask_cross_entropy,
                                         softmax_cross_entropy)
from tests.helpers import assert_close
from tests.test_focal import (assert_second_order, engine_ran,
                              graph_functions, saved_bytes, small_blocks,
                              value_grad_hvp)

REDUCTIONS = ('none', 'mean', 'sum')
CLASS_WEIGHT = [1.0, 2.0, 0.5, 1.5, 3.0, 0.25, 1.0]
C = len(CLASS_WEIGHT)


def softmax_kernel_path(logits, label, ignore_index, factor, reduce_sum):
    """The softmax fast kernel through the engine's Function."""
    return gradient_from_output(
        ce_kernels.softmax_rule(ignore_index, reduce_sum), logits, label,
        factor)


def sigmoid_kernel_path(logits, label, pos_weight, row_weight):
    """The integer-label sigmoid fast kernel through the engine's Function.
    """
    return GradientInForward.apply(ce_module.sigmoid_one_hot_kernel,
                                   ce_module.sigmoid_one_hot_plain, logits,
                                   label, pos_weight, row_weight)


def build_pair(mmdet_losses, name='CrossEntropyLoss', **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return (getattr(mmdet_losses, name)(**kwargs),
                getattr(mmloss, name)(**kwargs))


def run_pair(ref, ours, pred, *args, **kwargs):
    """Values and input gradients of both modules."""
    outs, grads = [], []
    for module in (ref, ours):
        x = pred.detach().clone().requires_grad_()
        out = module(x, *args, **kwargs)
        # a random projection checks every element of the gradient
        proj = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
        (out * proj).sum().backward()
        outs.append(out.detach())
        grads.append(x.grad)
    return outs, grads


def assert_parity(ref, ours, pred, *args, what='', **kwargs):
    (a, b), (ga, gb) = run_pair(ref, ours, pred, *args, **kwargs)
    assert b.shape == a.shape, what
    assert_close(b, a, what=f'{what} value')
    assert_close(gb, ga, what=f'{what} grad')


# ---------------------------------------------------------------- parity
@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('reduction', REDUCTIONS)
@pytest.mark.parametrize('use_sigmoid', [False, True])
def test_parity_grid(mmdet_losses, seed, reduction, use_sigmoid):
    g = torch.Generator().manual_seed(seed)
    n = 64
    pred = torch.randn(n, C, generator=g) * 3
    high = C + 1 if use_sigmoid else C
    label = torch.randint(0, high, (n,), generator=g)
    weight = torch.rand(n, generator=g)
    for cw in (None, CLASS_WEIGHT):
        ref, ours = build_pair(mmdet_losses, use_sigmoid=use_sigmoid,
                               reduction=reduction, class_weight=cw,
                               loss_weight=0.7)
        what = f'sigmoid={use_sigmoid} {reduction} cw={cw is not None}'
        assert_parity(ref, ours, pred, label, what=what)
        assert_parity(ref, ours, pred, label, weight, what=what + ' w')
        if reduction == 'mean':
            for avg in (0, 0.0, 17.5, torch.tensor(9.0)):
                assert_parity(ref, ours, pred, label, weight,
                              avg_factor=avg, what=f'{what} avg={avg}')
        for override in REDUCTIONS:
            assert_parity(ref, ours, pred, label, weight,
                          reduction_override=override,
                          what=f'{what} override={override}')


@pytest.mark.parametrize('use_sigmoid', [False, True])
@pytest.mark.parametrize('reduction', REDUCTIONS)
def test_parity_ignore_index_avg_non_ignore(mmdet_losses, use_sigmoid,
                                            reduction):
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(50, C, generator=g)
    label = torch.randint(0, C, (50,), generator=g)
    label[::4] = 255
    if use_sigmoid:
        label[1::7] = -1  # negative labels: ignored by the sigmoid path
        label[2::9] = C   # background
    weight = torch.rand(50, generator=g)
    for avg_non_ignore in (False, True):
        ref, ours = build_pair(mmdet_losses, use_sigmoid=use_sigmoid,
                               reduction=reduction, ignore_index=255,
                               avg_non_ignore=avg_non_ignore)
        assert_parity(ref, ours, pred, label, weight,
                      what=f'avg_non_ignore={avg_non_ignore}')
        # ignore_index given to forward overrides the module's
        assert_parity(ref, ours, pred, torch.where(label == 255, 3, label),
                      weight, ignore_index=3, what='forward ignore_index')


@pytest.mark.parametrize('reduction', REDUCTIONS)
def test_parity_sigmoid_dense_targets(mmdet_losses, reduction):
    """pred and label with the same dims: label is the (soft) target."""
    g = torch.Generator().manual_seed(4)
    pred = torch.randn(30, C, generator=g)
    target = torch.rand(30, C, generator=g)
    target[0, 0] = -1  # negative target: masked out, as MMDetection does
    ref, ours = build_pair(mmdet_losses, use_sigmoid=True,
                           reduction=reduction, avg_non_ignore=True)
    assert_parity(ref, ours, pred, target)
    assert_parity(ref, ours, pred, target, torch.rand(30, 1, generator=g))
    # RPN-style (N,) logits with (N,) integer labels
    logits = torch.randn(40, generator=g)
    labels = torch.randint(0, 2, (40,), generator=g)
    assert_parity(ref, ours, logits, labels, torch.rand(40, generator=g))


def test_parity_softmax_dense_prediction(mmdet_losses):
    """(N, C, H, W) logits with (N, H, W) labels (segmentation heads)."""
    g = torch.Generator().manual_seed(5)
    pred = torch.randn(2, C, 5, 6, generator=g)
    label = torch.randint(0, C, (2, 5, 6), generator=g)
    label[0, 0] = 255
    for reduction in REDUCTIONS:
        ref, ours = build_pair(mmdet_losses, reduction=reduction,
                               ignore_index=255, avg_non_ignore=True,
                               class_weight=CLASS_WEIGHT)
        assert_parity(ref, ours, pred, label, what=reduction)


def test_parity_mask(mmdet_losses):
    g = torch.Generator().manual_seed(6)
    pred = torch.randn(6, 4, 7, 7, generator=g)
    target = torch.rand(6, 7, 7, generator=g)
    labels = torch.randint(0, 4, (6,), generator=g)
    ref, ours = build_pair(mmdet_losses, use_mask=True, loss_weight=2.0)
    assert_parity(ref, ours, pred, target, labels)
    ref, ours = build_pair(mmdet_losses, use_mask=True,
                           class_weight=[0.5] * 7)
    assert_parity(ref, ours, pred, target, labels, what='class_weight')
    # MMDetection: NaN for no RoIs; ours: 0 that backpropagates
    empty = torch.zeros(0, 4, 7, 7, requires_grad=True)
    out = ours(empty, torch.zeros(0, 7, 7), torch.zeros(0, dtype=torch.long))
    assert out.shape == (1,) and out.item() == 0
    out.sum().backward()


# every form MMDetection's mask_cross_entropy takes: (N, C, *) logits, the
# target shaped like the RoI class's logits after its squeeze(1)
MASK_FORMS = [
    ((6, 4, 7, 7), (6, 7, 7)),        # Mask R-CNN
    ((6, 4, 9), (6, 9)),              # PointRend points
    ((6, 1, 9), (6, 9)),              # class-agnostic points
    ((1, 4, 9), (1, 9)),              # one RoI
    ((6, 4, 1), (6,)),                # one point: squeezed
    ((6, 4, 1, 5), (6, 5)),           # size-1 dim 1: squeezed
    ((6, 4, 2, 3, 3), (6, 2, 3, 3)),  # more trailing dims
]


@pytest.mark.parametrize('label_dtype', [torch.int64, torch.int32])
@pytest.mark.parametrize('shapes', MASK_FORMS, ids=str)
def test_parity_mask_forms(mmdet_losses, shapes, label_dtype):
    pred_shape, target_shape = shapes
    g = torch.Generator().manual_seed(16)
    pred = torch.randn(*pred_shape, generator=g) * 2
    target = torch.rand(*target_shape, generator=g)
    labels = torch.randint(0, pred_shape[1], (pred_shape[0],),
                           generator=g).to(label_dtype)
    for options in (dict(loss_weight=1.5), dict(class_weight=[2.0])):
        ref, ours = build_pair(mmdet_losses, use_mask=True, **options)
        # mmdet's mask criterion takes extra keywords and ignores them
        assert_parity(ref, ours, pred, target, labels, unused=1,
                      what=f'{shapes} {options}')


# the argument forms mmdet's heads pass (bbox heads, RPN, dense heads)
AVG_FACTORS = (None, 7, 7.5, torch.tensor(7.5), torch.tensor([7.5]))


@pytest.mark.parametrize('label_dtype', [torch.int64, torch.int32])
@pytest.mark.parametrize('avg_factor', AVG_FACTORS, ids=repr)
@pytest.mark.parametrize('use_sigmoid', [False, True])
def test_parity_argument_forms(mmdet_losses, use_sigmoid, avg_factor,
                               label_dtype):
    g = torch.Generator().manual_seed(17)
    pred = torch.randn(12, C, generator=g) * 3
    label = torch.randint(0, C + 1 if use_sigmoid else C, (12,),
                          generator=g).to(label_dtype)
    weight = torch.rand(12, generator=g)
    ref, ours = build_pair(mmdet_losses, use_sigmoid=use_sigmoid,
                           class_weight=CLASS_WEIGHT)
    # F.cross_entropy (mmdet's softmax) takes int64 labels only: ours
    # takes every integer dtype, compared with mmdet's int64 result
    ref_label = label if use_sigmoid else label.long()
    for override in (None, 'none', 'mean', 'sum'):
        if override == 'sum' and avg_factor is not None:
            continue  # both raise (tested elsewhere)
        for w in (None, weight):
            kwargs = dict(avg_factor=avg_factor, reduction_override=override)
            (want,), (want_grad,) = run_pair_one(ref, pred, ref_label, w,
                                                 **kwargs)
            (got,), (got_grad,) = run_pair_one(ours, pred, label, w,
                                               **kwargs)
            what = f'{override} weight={w is not None}'
            assert got.shape == want.shape, what
            assert_close(got, want, what=f'{what} value')
            assert_close(got_grad, want_grad, what=f'{what} grad')


def run_pair_one(module, pred, *args, **kwargs):
    """:func:`run_pair` of one module: ([value], [input gradient])."""
    x = pred.detach().clone().requires_grad_()
    out = module(x, *args, **kwargs)
    proj = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    (out * proj).sum().backward()
    return [out.detach()], [x.grad]


def test_parity_sigmoid_one_hot_float_targets(mmdet_losses):
    """Dense heads pass float one-hot targets and (N, C) weights."""
    g = torch.Generator().manual_seed(18)
    pred = torch.randn(10, C, generator=g) * 3
    target = torch.nn.functional.one_hot(
        torch.randint(0, C, (10,), generator=g), C).float()
    for weight in (None, torch.rand(10, C, generator=g),
                   torch.rand(10, 1, generator=g)):
        for override in (None, 'none', 'sum'):
            ref, ours = build_pair(mmdet_losses, use_sigmoid=True)
            assert_parity(ref, ours, pred, target, weight,
                          reduction_override=override, avg_factor=None,
                          what=f'{override}')


def test_mask_forms_mmdet_refuses_are_refused(mmdet_losses):
    ref, ours = build_pair(mmdet_losses, use_mask=True)
    pred, labels = torch.randn(4, 3, 6), torch.tensor([0, 2, 1, 0])
    # (N, C) logits (nothing left to squeeze), a target of another shape,
    # a reduction or avg_factor other than MMDetection's only one
    for args, kwargs in (((torch.randn(4, 3), torch.rand(4), labels), {}),
                         ((pred, torch.rand(4, 1, 6), labels), {}),
                         ((pred, torch.rand(4, 6), labels),
                          dict(reduction_override='sum')),
                         ((pred, torch.rand(4, 6), labels),
                          dict(avg_factor=3.0))):
        with pytest.raises(Exception):
            ref(*args, **kwargs)
        with pytest.raises(ValueError, match='CrossEntropyLoss'):
            ours(*args, **kwargs)
    # softmax and sigmoid refuse extra keywords, as mmdet's do
    with pytest.raises(TypeError, match='CrossEntropyLoss'):
        mmloss.CrossEntropyLoss()(torch.randn(4, 3), labels, unused=1)


def test_point_rend_mask_point_head(mmdet_losses):
    """MMDetection's PointRend point head with our loss gives its loss."""
    heads = pytest.importorskip('mmdet.models.roi_heads.mask_heads')
    structures = pytest.importorskip('mmdet.structures.mask')
    from mmengine.config import ConfigDict
    from mmengine.structures import InstanceData
    from mmdet.models.task_modules.samplers import SamplingResult
    torch.manual_seed(0)
    num_classes, num_points = 5, 14
    bboxes = torch.tensor([[2., 3., 20., 25.], [10., 8., 30., 28.],
                           [0., 0., 16., 16.]])
    gt_labels = torch.tensor([3, 1, 4])
    masks = (torch.rand(3, 32, 32) > 0.5).numpy()
    gt = InstanceData(bboxes=bboxes, labels=gt_labels,
                      masks=structures.BitmapMasks(masks, 32, 32))
    priors = bboxes + torch.randn(3, 4)
    result = SamplingResult(
        pos_inds=torch.arange(3), neg_inds=torch.tensor([], dtype=torch.long),
        priors=priors, gt_bboxes=bboxes,
        assign_result=_assign_result(gt_labels), gt_flags=torch.zeros(3))
    cfg = ConfigDict(num_points=num_points)
    rel_points = torch.rand(3, num_points, 2)
    losses = []
    for loss in (dict(type='CrossEntropyLoss', use_mask=True),
                 dict(type='mmloss.CrossEntropyLoss', use_mask=True)):
        for class_agnostic in (False, True):
            torch.manual_seed(1)
            head = heads.MaskPointHead(num_classes=num_classes,
                                       in_channels=8, fc_channels=8,
                                       class_agnostic=class_agnostic,
                                       loss_point=loss)
            channels = 1 if class_agnostic else num_classes
            point_pred = torch.randn(3, channels, num_points,
                                     generator=torch.Generator()
                                     .manual_seed(2), requires_grad=True)
            out = head.loss_and_target(point_pred, rel_points, [result],
                                       [gt], cfg)
            out['loss_point'].backward()
            losses.append((out['loss_point'].detach(), point_pred.grad))
    for (ref, ref_grad), (ours, grad) in zip(losses[:2], losses[2:]):
        assert ours.shape == ref.shape == (1,)
        assert_close(ours, ref, what='PointRend loss_point')
        assert_close(grad, ref_grad, what='PointRend loss_point grad')


def _assign_result(gt_labels):
    from mmdet.models.task_modules.assigners import AssignResult
    num = gt_labels.numel()
    return AssignResult(num, torch.arange(1, num + 1), torch.ones(num),
                        labels=gt_labels)


@pytest.mark.parametrize('use_sigmoid', [False, True])
def test_parity_realistic_size(mmdet_losses, use_sigmoid):
    g = torch.Generator().manual_seed(7)
    n, c = 100_000, 80 if use_sigmoid else 81
    pred = torch.randn(n, c, generator=g) * 2
    label = torch.randint(0, 81, (n,), generator=g)
    weight = torch.rand(n, generator=g)
    ref, ours = build_pair(mmdet_losses, use_sigmoid=use_sigmoid)
    (a, b), (ga, gb) = run_pair(ref, ours, pred, label, weight,
                                avg_factor=1234.0)
    assert_close(b, a, what='value')
    assert_close(gb, ga, what='grad')


def test_custom_loss_parity(mmdet_losses):
    g = torch.Generator().manual_seed(8)
    for use_sigmoid in (False, True):
        ref, ours = build_pair(mmdet_losses, 'CrossEntropyCustomLoss',
                               use_sigmoid=use_sigmoid, num_classes=6)
        for attr in ('custom_cls_channels', 'custom_activation',
                     'custom_accuracy'):
            assert getattr(ours, attr) is True
        channels = ref.get_cls_channels(6)
        assert ours.get_cls_channels(6) == channels
        score = torch.randn(20, channels, generator=g)
        labels = torch.randint(0, 7, (20,), generator=g)
        assert_close(ours.get_activation(score), ref.get_activation(score))
        acc_ref = ref.get_accuracy(score, labels)
        acc = ours.get_accuracy(score, labels)
        assert_close(acc['acc_classes'], acc_ref['acc_classes'])
        if not use_sigmoid:
            assert_parity(ref, ours, score, labels, what='custom loss')
    with pytest.raises(ValueError, match='CrossEntropyCustomLoss'):
        mmloss.CrossEntropyCustomLoss()
    with pytest.raises(ValueError, match='CrossEntropyCustomLoss'):
        mmloss.CrossEntropyCustomLoss(num_classes=3).get_cls_channels(4)


def test_head_attributes(mmdet_losses):
    ref, ours = build_pair(mmdet_losses, use_sigmoid=True)
    assert ours.use_sigmoid is True
    for attr in ('custom_cls_channels', 'custom_activation',
                 'custom_accuracy'):
        assert getattr(ours, attr, False) == getattr(ref, attr, False)


def test_registry_build():
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    ours = MODELS.build(dict(type='mmloss.CrossEntropyLoss',
                             use_sigmoid=True, loss_weight=2.0))
    # (while mmdet's losses are imported the registry gives a twin class
    # deriving from ours and mmdet's: mmloss.registry)
    assert isinstance(ours, mmloss.CrossEntropyLoss)
    assert ours.loss_weight == 2
    assert not isinstance(MODELS.build(dict(type='CrossEntropyLoss')),
                          mmloss.CrossEntropyLoss)


def test_no_warning_on_default_paths():
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        mmloss.CrossEntropyLoss()
        mmloss.CrossEntropyLoss(use_sigmoid=True, ignore_index=3,
                                avg_non_ignore=True)
        mmloss.CrossEntropyLoss(ignore_index=3, reduction='sum')
    with pytest.warns(UserWarning, match='avg_non_ignore'):
        mmloss.CrossEntropyLoss(ignore_index=3)


# ---------------------------------------------- fast paths vs plain formula
@pytest.fixture(autouse=True)
def fast_paths_for_every_size(monkeypatch):
    """The tests here use small logits; run the fast paths on them too (by
    default the dispatch table sends fewer rows to the plain formula)."""
    for kind, entry in list(dispatch.TUNING.items()):
        monkeypatch.setitem(dispatch.TUNING, kind, dataclasses.replace(
            entry, min_rows={key: rows for key, rows in entry.min_rows.items()
                             if not key.startswith('CrossEntropyLoss')}))


def test_small_logits_take_aten_and_agree(monkeypatch):
    monkeypatch.undo()
    threshold = dispatch.TUNING['cpu'].min_rows['CrossEntropyLoss']
    g = torch.Generator().manual_seed(21)
    pred = torch.randn(threshold, 81, generator=g) * 3
    label = torch.randint(0, 81, (threshold,), generator=g)
    for n, fused in ((threshold - 1, False), (threshold, True)):
        x = pred[:n].clone().requires_grad_()
        out = softmax_cross_entropy(x, label[:n])
        names = [type(f).__name__ for f, _ in out.grad_fn.next_functions
                 if f is not None]
        assert any('GradientFromOutput' in name for name in names) == \
            fused, names
        out.backward()
        x_ref = pred[:n].clone().requires_grad_()
        ref = torch.nn.functional.cross_entropy(x_ref, label[:n])
        ref.backward()
        assert_close(out, ref, rtol=1e-5)
        assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-9)


def test_fast_matches_plain():
    g = torch.Generator().manual_seed(9)
    pred = torch.randn(40, C, generator=g, dtype=torch.float64)
    label = torch.randint(0, C + 1, (40,), generator=g)
    label[3] = -100
    weight = torch.rand(40, generator=g, dtype=torch.float64)
    cw = torch.tensor(CLASS_WEIGHT, dtype=torch.float64)
    for reduction in ('mean', 'sum'):
        for fn, lab in ((softmax_cross_entropy, label.clamp(max=C - 1)),
                        (binary_cross_entropy, label)):
            results = []
            for fast in (True, False):
                x = pred.clone().requires_grad_()
                out = fn(x, lab, weight, reduction, class_weight=cw,
                         fast=fast)
                out.backward()
                results.append((out.detach(), x.grad))
            assert_close(results[0][0], results[1][0], rtol=1e-12,
                         atol=1e-12, what=f'{fn.__name__} value')
            assert_close(results[0][1], results[1][1], rtol=1e-12,
                         atol=1e-12, what=f'{fn.__name__} grad')


def test_gradcheck():
    g = torch.Generator().manual_seed(10)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64,
                    requires_grad=True)
    label = torch.tensor([0, 4, 2, -100, 1, 3])
    row_weight = torch.rand(6, generator=g, dtype=torch.float64)
    for rw in (None, row_weight):
        for reduce_sum in (False, True):
            assert torch.autograd.gradcheck(
                lambda t: softmax_kernel_path(t, label, -100, rw,
                                              reduce_sum), (x,))
    bin_label = torch.tensor([0, 5, 2, -1, 4, 3])
    pw = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda t: sigmoid_kernel_path(t, bin_label, pw, row_weight), (x,))
    weight = torch.rand(6, generator=g, dtype=torch.float64,
                        requires_grad=True)
    for use_sigmoid in (False, True):
        loss = mmloss.CrossEntropyLoss(use_sigmoid=use_sigmoid,
                                       class_weight=[1, 2, 3, 4, 5])
        lab = bin_label if use_sigmoid else label
        assert torch.autograd.gradcheck(
            lambda t, w: loss(t, lab, w, avg_factor=3.0), (x, weight))


@pytest.mark.parametrize('rows_only', [True, False])
def test_accurate_neg_log_where_softmax_underflows(rows_only):
    """Label logits far below the row's maximum: the softmax entry is 0 or
    subnormal, so the loss comes from logsumexp; both the CPU (rows only)
    and the accelerator (select) variants give F.cross_entropy's value."""
    logits = torch.tensor([[0.0, 1.0, 2.0], [500.0, -500.0, 0.0],
                           [90.0, 0.0, 0.0], [1e4, -1e4, 1e4]])
    label = torch.tensor([2, 1, 1, 1])
    column = label.unsqueeze(1)
    picked = torch.softmax(logits, 1).gather(1, column).squeeze(1)
    assert picked[1] == 0 and picked[3] == 0
    out = accurate_neg_log(picked, logits, column, rows_only)
    ref = torch.nn.functional.cross_entropy(logits.double(), label,
                                            reduction='none')
    assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)


def test_softmax_fast_path_none_reduction_and_retained_graph():
    """The fused path with reduction 'none' (per-row gradients), weights,
    class weights and ignored rows equals F.cross_entropy; a second backward
    through a retained graph gives the same gradient (nothing saved is
    overwritten)."""
    g = torch.Generator().manual_seed(12)
    pred = torch.randn(50, C, generator=g, dtype=torch.float64) * 3
    label = torch.randint(0, C, (50,), generator=g)
    label[[4, 9]] = -100
    weight = torch.rand(50, generator=g, dtype=torch.float64)
    cw = torch.tensor(CLASS_WEIGHT, dtype=torch.float64)
    upstream = torch.randn(50, generator=g, dtype=torch.float64)
    x = pred.clone().requires_grad_()
    out = softmax_cross_entropy(x, label, weight, 'none', class_weight=cw)
    (out * upstream).sum().backward(retain_graph=True)
    first = x.grad.clone()
    (out * upstream).sum().backward()
    assert_close(x.grad, 2 * first, rtol=1e-12, atol=1e-12)
    x_ref = pred.clone().requires_grad_()
    ref = torch.nn.functional.cross_entropy(
        x_ref, label, weight=cw, reduction='none') * weight
    (ref * upstream).sum().backward()
    assert_close(out.detach(), ref.detach(), rtol=1e-12, atol=1e-12)
    assert_close(first, x_ref.grad, rtol=1e-12, atol=1e-12)


def test_hand_computed():
    # softmax: -log(e^2 / (e^0 + e^2)) = log(1 + e^-2)
    pred = torch.tensor([[0.0, 2.0]])
    out = mmloss.CrossEntropyLoss()(pred, torch.tensor([1]))
    assert_close(out, torch.log1p(torch.exp(torch.tensor(-2.0))))
    # sigmoid one-hot: softplus(0) + softplus(-2) for label 1
    out = mmloss.CrossEntropyLoss(use_sigmoid=True, reduction='sum')(
        pred, torch.tensor([1]))
    expected = torch.nn.functional.softplus(torch.tensor(0.0)) + \
        torch.nn.functional.softplus(torch.tensor(-2.0))
    assert_close(out, expected)


# ------------------------------------------------------------- hardening
@pytest.mark.parametrize('use_sigmoid', [False, True])
@pytest.mark.parametrize('reduction', REDUCTIONS)
def test_empty_input(use_sigmoid, reduction):
    loss = mmloss.CrossEntropyLoss(use_sigmoid=use_sigmoid,
                                   reduction=reduction)
    pred = torch.zeros(0, C, requires_grad=True)
    out = loss(pred, torch.zeros(0, dtype=torch.long))
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert pred.grad is not None and pred.grad.shape == pred.shape


@pytest.mark.parametrize('use_sigmoid', [False, True])
def test_all_ignored(mmdet_losses, use_sigmoid):
    """Every label ignored with avg_non_ignore: the mean is 0, finite."""
    pred = torch.randn(10, C, requires_grad=True)
    label = torch.full((10,), 255)
    ref, ours = build_pair(mmdet_losses, use_sigmoid=use_sigmoid,
                           ignore_index=255, avg_non_ignore=True)
    out = ours(pred, label)
    assert out.item() == 0
    out.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))
    assert_close(out, ref(pred, label))


def test_all_zero_weight():
    pred = torch.randn(10, C, requires_grad=True)
    out = mmloss.CrossEntropyLoss()(pred, torch.zeros(10, dtype=torch.long),
                                    torch.zeros(10))
    assert out.item() == 0
    out.backward()


@pytest.mark.parametrize('use_sigmoid', [False, True])
def test_extreme_logits(mmdet_losses, use_sigmoid):
    pred = torch.tensor([[100.0, -100.0, 0.0], [-100.0, 100.0, -100.0]])
    label = torch.tensor([1, 2])
    ref, ours = build_pair(mmdet_losses, use_sigmoid=use_sigmoid)
    assert_parity(ref, ours, pred, label)
    assert torch.isfinite(ours(pred, label))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('use_sigmoid', [False, True])
def test_half_precision(dtype, use_sigmoid):
    g = torch.Generator().manual_seed(11)
    pred = (torch.randn(3000, C, generator=g) * 4)
    label = torch.randint(0, C, (3000,), generator=g)
    loss = mmloss.CrossEntropyLoss(use_sigmoid=use_sigmoid,
                                   reduction='sum')
    x = pred.to(dtype).requires_grad_()
    out = loss(x, label)
    # a reduced loss of half inputs is float32 (mmloss.precision)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    out.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    # the float32 sum would overflow a float16 accumulator (> 65504)
    expected = loss(pred.to(dtype).float(), label)
    assert_close(out.float(), expected, rtol=1e-2, atol=0)


@pytest.mark.parametrize('use_sigmoid', [False, True])
def test_nan_propagates(use_sigmoid):
    pred = torch.randn(4, C)
    pred[1, 2] = float('nan')
    out = mmloss.CrossEntropyLoss(use_sigmoid=use_sigmoid)(
        pred, torch.tensor([0, 1, 2, 3]))
    assert torch.isnan(out)


def test_invalid_inputs():
    ce = mmloss.CrossEntropyLoss()
    bce = mmloss.CrossEntropyLoss(use_sigmoid=True)
    pred = torch.randn(5, C)
    with pytest.raises(TypeError, match='CrossEntropyLoss'):
        ce(pred, torch.zeros(5))
    with pytest.raises(TypeError, match='CrossEntropyLoss'):
        bce(pred, torch.zeros(5))
    with pytest.raises(ValueError, match='CrossEntropyLoss.*7'):
        ce(pred, torch.tensor([0, 1, 7, 2, 3]))
    with pytest.raises(ValueError, match='CrossEntropyLoss'):
        ce(pred, torch.tensor([0, 1, -3, 2, 3]))
    with pytest.raises(ValueError, match='CrossEntropyLoss'):
        bce(pred, torch.tensor([0, 1, C + 1, 2, 3]))
    with pytest.raises(ValueError, match='CrossEntropyLoss'):
        ce(pred, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match='CrossEntropyLoss'):
        ce(pred, torch.zeros(5, dtype=torch.long), torch.ones(4))
    with pytest.raises(ValueError, match='CrossEntropyLoss'):
        bce(pred, torch.zeros(5, dtype=torch.long), torch.ones(4))
    with pytest.raises(ValueError, match='CrossEntropyLoss'):
        ce(pred, torch.zeros(5, dtype=torch.long), reduction_override='avg')
    with pytest.raises(ValueError, match='CrossEntropyLoss'):
        mmloss.CrossEntropyLoss(class_weight=[1.0, 2.0])(
            pred, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match='CrossEntropyLoss'):
        ce(pred, torch.zeros(5, dtype=torch.long), reduction_override='sum',
           avg_factor=2.0)
    with pytest.raises(TypeError, match='CrossEntropyLoss'):
        ce(pred, torch.zeros(5, dtype=torch.long), bogus=1)
    with pytest.raises(ValueError, match='CrossEntropyLoss'):
        mmloss.CrossEntropyLoss(loss_weight=-1.0)
    with pytest.raises(ValueError, match='CrossEntropyLoss'):
        # built, as in MMDetection; the call raises
        mmloss.CrossEntropyLoss(reduction='avg')(
            pred, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match='CrossEntropyLoss'):
        mmloss.CrossEntropyLoss(use_sigmoid=True, use_mask=True)
    with pytest.raises(TypeError, match='CrossEntropyLoss'):
        mmloss.CrossEntropyLoss(class_weight='heavy')
    with pytest.raises(TypeError, match='CrossEntropyLoss'):
        mmloss.CrossEntropyLoss(ignore_index=2.5)
    mask = mmloss.CrossEntropyLoss(use_mask=True)
    with pytest.raises(ValueError, match='CrossEntropyLoss'):
        mask(torch.randn(2, 3, 4, 4), torch.rand(2, 4, 4),
             torch.tensor([0, 3]))
    with pytest.raises(ValueError, match='CrossEntropyLoss'):
        mask(torch.randn(2, 3, 4, 4), torch.rand(2, 4, 5),
             torch.tensor([0, 1]))


# ---------------------------------------------- the engine: double backward
def _ce_cases():
    g = torch.Generator().manual_seed(30)
    pred = torch.randn(20, C, generator=g, dtype=torch.float64) * 2
    label = torch.randint(0, C, (20,), generator=g)
    label[[2, 7]] = 255
    bin_label = torch.randint(-1, C + 1, (20,), generator=g)
    weight = torch.rand(20, generator=g, dtype=torch.float64)
    return [
        ('softmax', dict(ignore_index=255, avg_non_ignore=True,
                         class_weight=CLASS_WEIGHT), pred, label,
         dict(weight=weight)),
        ('softmax-none', dict(reduction='none', class_weight=CLASS_WEIGHT),
         pred, label.clamp(max=C - 1), dict(weight=weight)),
        ('softmax-sum', dict(reduction='sum'), pred, label.clamp(max=C - 1),
         {}),
        ('sigmoid', dict(use_sigmoid=True, class_weight=CLASS_WEIGHT), pred,
         bin_label, dict(weight=weight, avg_factor=6.0)),
        ('sigmoid-sum', dict(use_sigmoid=True, reduction='sum'), pred,
         bin_label, {}),
    ]


@pytest.mark.parametrize('kind', ['cpu', 'cuda'])
@pytest.mark.parametrize('case', range(5))
def test_double_backward_equals_the_plain_formula(case, kind):
    """create_graph=True gives a gradient with a graph (the sigmoid path
    used to raise an in-place error there) whose Hessian-vector product is
    the plain formula's, with the CPU's and (pretended) an accelerator's
    kernels."""
    name, cfg, pred, label, kwargs = _ce_cases()[case]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        loss = mmloss.CrossEntropyLoss(**cfg)
    with dispatch.pretend_device(kind):
        fast = value_grad_hvp(lambda x: loss(x, label, **kwargs), [pred],
                              expect_engine=True)
    plain = value_grad_hvp(lambda x: loss(x, label, **kwargs), [pred],
                           fast=False, expect_engine=False)
    assert_second_order(fast, plain, what=name)


@pytest.mark.parametrize('case', range(5))
def test_second_derivatives_match_mmdet(mmdet_losses, case):
    name, cfg, pred, label, kwargs = _ce_cases()[case]
    ref, ours = build_pair(mmdet_losses, **cfg)
    results = [[r.double() for r in value_grad_hvp(
        lambda x: m(x, label, **kwargs), [pred])] for m in (ours, ref)]
    # mmdet casts the weight (and, with sigmoid, the loss) to float32
    assert_second_order(*results, rtol=1e-5 if 'sigmoid' in name else 1e-6,
                        atol=1e-7 if 'sigmoid' in name else 1e-11,
                        what=name)


def test_mask_and_dense_double_backward_match_mmdet(mmdet_losses):
    g = torch.Generator().manual_seed(31)
    pred = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64)
    target = torch.rand(3, 5, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 3, 1])
    ref, ours = build_pair(mmdet_losses, use_mask=True)
    results = [value_grad_hvp(lambda x: m(x, target, labels), [pred])
               for m in (ours, ref)]
    assert_second_order(*results, what='mask')
    logits = torch.randn(10, C, generator=g, dtype=torch.float64)
    dense = torch.rand(10, C, generator=g, dtype=torch.float64)
    ref, ours = build_pair(mmdet_losses, use_sigmoid=True)
    # mmdet's sigmoid loss computes in float32
    results = [[r.double() for r in value_grad_hvp(
        lambda x: m(x, dense), [logits])] for m in (ours, ref)]
    assert_second_order(*results, rtol=1e-5, atol=1e-7, what='dense')


def test_gradgradcheck():
    g = torch.Generator().manual_seed(32)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64,
                    requires_grad=True)
    label = torch.tensor([0, 4, 2, -100, 1, 3])
    row_weight = torch.rand(6, generator=g, dtype=torch.float64)
    for rw in (None, row_weight):
        for reduce_sum in (False, True):
            assert torch.autograd.gradgradcheck(
                lambda t: softmax_kernel_path(t, label, -100, rw,
                                              reduce_sum), (x,))
    bin_label = torch.tensor([0, 5, 2, -1, 4, 3])
    pw = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0], dtype=torch.float64)
    assert torch.autograd.gradgradcheck(
        lambda t: sigmoid_kernel_path(t, bin_label, pw, row_weight), (x,))
    # as many rows as classes: the per-row factor still scales rows
    square = x[:5].detach().clone().requires_grad_()
    for reduce_sum in (False, True):
        assert torch.autograd.gradcheck(
            lambda t: softmax_kernel_path(t, label[:5], -100, row_weight[:5],
                                          reduce_sum), (square,))
    assert torch.autograd.gradcheck(
        lambda t: sigmoid_kernel_path(t, bin_label[:5], pw, row_weight[:5]),
        (square,))
    for use_sigmoid in (False, True):
        loss = mmloss.CrossEntropyLoss(use_sigmoid=use_sigmoid)
        lab = bin_label if use_sigmoid else label
        assert torch.autograd.gradgradcheck(
            lambda t: loss(t, lab, row_weight, avg_factor=3.0), (x,))


def test_softmax_accelerator_branch_where_the_softmax_underflows():
    """Off the CPU every row's logsumexp is computed and selected (no host
    sync); forced with pretend_device it gives F.cross_entropy's value and
    gradient, underflowed label entries included."""
    pred = torch.tensor([[0.0, 1.0, 2.0], [500.0, -500.0, 0.0],
                         [90.0, 0.0, 0.0], [1e4, -1e4, 1e4]])
    label = torch.tensor([2, 1, 1, 1])
    weight = torch.tensor([1.0, 0.5, 2.0, 1.0])
    for reduction in REDUCTIONS:
        results = []
        for fast, kind in ((True, 'cuda'), (False, 'cpu')):
            x = pred.clone().requires_grad_()
            with mmloss.fast_paths(fast), dispatch.pretend_device(kind):
                out = softmax_cross_entropy(x, label, weight, reduction)
                assert engine_ran(out) == fast
            out.sum().backward()
            results.append((out.detach(), x.grad))
        assert_close(results[0][0], results[1][0], rtol=1e-6)
        assert_close(results[0][1], results[1][1], rtol=1e-6)


def test_sigmoid_min_rows_of_the_dispatch_table(monkeypatch):
    """The integer-label sigmoid path below the table's min_rows takes the
    plain formula (and the same value)."""
    monkeypatch.undo()
    threshold = dispatch.TUNING['cpu'].min_rows['CrossEntropyLoss(sigmoid)']
    g = torch.Generator().manual_seed(33)
    pred = torch.randn(threshold, 6, generator=g)
    label = torch.randint(0, 7, (threshold,), generator=g)
    for n, engine in ((threshold - 1, False), (threshold, True)):
        x = pred[:n].clone().requires_grad_()
        out = binary_cross_entropy(x, label[:n])
        assert engine_ran(out) == engine
        with mmloss.fast_paths(False):
            ref = binary_cross_entropy(x, label[:n])
        assert_close(out, ref)


def test_fast_false_is_a_per_call_override():
    g = torch.Generator().manual_seed(34)
    pred = torch.randn(12, C, generator=g).requires_grad_()
    label = torch.randint(0, C, (12,), generator=g)
    for fn in (softmax_cross_entropy, binary_cross_entropy):
        assert graph_functions(fn(pred, label))
        assert not graph_functions(fn(pred, label, fast=False))


@pytest.mark.parametrize('n', [16, 3000])
def test_autocast_gives_the_float32_result(n):
    g = torch.Generator().manual_seed(35)
    pred = torch.randn(n, C, generator=g) * 3
    label = torch.randint(0, C, (n,), generator=g)
    weight = torch.rand(n, generator=g)
    masks = torch.randn(4, C, 6, 6, generator=g)
    cases = [(dict(), pred, label), (dict(use_sigmoid=True), pred, label),
             (dict(use_sigmoid=True), pred, torch.rand(n, C, generator=g)),
             (dict(use_mask=True), masks, torch.rand(4, 6, 6, generator=g))]
    for cfg, x0, target in cases:
        # (mmdet broadcasts a mask loss's class_weight over W: none here)
        loss = mmloss.CrossEntropyLoss(
            class_weight=None if cfg.get('use_mask') else CLASS_WEIGHT,
            **cfg)
        extra = torch.tensor([0, 3, 1, 6]) if cfg.get('use_mask') else \
            weight[:, None] if target.is_floating_point() else weight
        results = []
        for autocast in (False, True):
            x = x0.clone().requires_grad_()
            with torch.autocast('cpu', dtype=torch.bfloat16,
                                enabled=autocast):
                out = loss(x, target, extra)
            out.sum().backward()
            assert out.dtype == torch.float32
            results.append((out.detach(), x.grad))
        assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-7)
        assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-9)


def test_function_errors_name_the_function_and_the_shapes():
    pred = torch.randn(5, C)
    with pytest.raises(ValueError, match=r'softmax_cross_entropy: pred has '
                       r'shape \(5, 7\) so label must have shape \(5,\)'):
        softmax_cross_entropy(pred, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r'softmax_cross_entropy.*\[0, 7\)'):
        softmax_cross_entropy(pred, torch.full((5, ), 7))
    with pytest.raises(ValueError, match=r'binary_cross_entropy: weight has '
                       r'shape \(4,\)'):
        binary_cross_entropy(pred, torch.zeros(5, dtype=torch.long),
                             torch.ones(4))
    with pytest.raises(ValueError, match='binary_cross_entropy: class_weight'):
        binary_cross_entropy(pred, torch.zeros(5, dtype=torch.long),
                             class_weight=torch.ones(3))
    with pytest.raises(ValueError, match=r'mask_cross_entropy: .*\(2, 3, 4, '
                       r'4\), \(2, 4, 5\)'):
        mask_cross_entropy(torch.randn(2, 3, 4, 4), torch.rand(2, 4, 5),
                           torch.tensor([0, 1]))
    with pytest.raises(TypeError, match='softmax_cross_entropy: pred'):
        softmax_cross_entropy(pred.long(), torch.zeros(5, dtype=torch.long))


# ------------------------------- gradient in backward: statistics and graph
def test_narrow_labels():
    label = torch.tensor([0, 3, -100, 80])
    assert ce_kernels.narrow_labels(label, 81, -100).dtype == torch.int8
    assert ce_kernels.narrow_labels(label, 81, 255).dtype == torch.int16
    assert ce_kernels.narrow_labels(label, 200, -100).dtype == torch.int16
    assert ce_kernels.narrow_labels(label, 40000, -100).dtype == torch.int32
    assert ce_kernels.narrow_labels(label, 81, 2 ** 40).dtype == torch.int64
    small = label.to(torch.int8)
    assert ce_kernels.narrow_labels(small, 81, -100) is small
    assert torch.equal(ce_kernels.narrow_labels(label, 81, 255).long(),
                       label)


def test_the_graph_keeps_the_exponentials_narrow_labels_and_row_sums():
    """The softmax fast path keeps its exponentials (not the caller's
    logits), the label columns in one byte each (81 classes) and one
    number per row (and the row factor only where there is one): never
    more than mmdet's log-softmax and int64 labels (and weight)."""
    g = torch.Generator().manual_seed(40)
    pred = torch.randn(2000, 81, generator=g).requires_grad_()
    label = torch.randint(0, 81, (2000, ), generator=g)
    total, kept = saved_bytes(mmloss.CrossEntropyLoss(), pred, label)
    assert pred.untyped_storage().data_ptr() not in kept
    assert total == pred.numel() * 4 + 2000 * (1 + 4)
    assert total <= pred.numel() * 4 + label.numel() * 8
    weight = torch.rand(2000, generator=g)
    total, _ = saved_bytes(mmloss.CrossEntropyLoss(), pred, label, weight)
    assert total == pred.numel() * 4 + 2000 * (1 + 4 + 4)
    assert total <= pred.numel() * 4 + label.numel() * (8 + 4)


@pytest.mark.parametrize('kind', ['cpu', 'cuda'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_row_sums_out_of_range_take_the_shift(kind, dtype):
    """Rows whose sum of exp(x) leaves the unshifted range (large logits,
    or all far below zero) make the CPU kernels shift every row by its
    maximum; the accelerator branch always does. Value and gradient equal
    F.cross_entropy's for every reduction, ignored rows included."""
    g = torch.Generator().manual_seed(41)
    base = torch.randn(30, C, generator=g, dtype=torch.float64) * 2
    label = torch.randint(0, C, (30, ), generator=g)
    label[4] = -100
    weight = torch.rand(30, generator=g, dtype=torch.float64)
    for shift in (0.0, 60.0, -45.0):
        pred = base.clone()
        pred[:3] += shift
        for reduction in REDUCTIONS:
            results = []
            for fast in (True, False):
                x = pred.to(dtype).requires_grad_()
                with mmloss.fast_paths(fast), dispatch.pretend_device(kind):
                    out = softmax_cross_entropy(x, label, weight.to(dtype),
                                                reduction)
                    assert engine_ran(out) == fast
                out.sum().backward()
                results.append((out.detach(), x.grad))
            tol = 1e-5 if dtype == torch.float32 else 1e-12
            assert_close(results[0][0], results[1][0], rtol=tol, atol=tol,
                         what=f'{shift} {reduction} value')
            assert_close(results[0][1], results[1][1], rtol=tol, atol=tol,
                         what=f'{shift} {reduction} grad')


def test_several_row_blocks(monkeypatch):
    """Row statistics and the gradient block by block (tiny blocks here)
    equal the plain formula's."""
    small_blocks(monkeypatch)
    g = torch.Generator().manual_seed(42)
    pred = torch.randn(50, C, generator=g, dtype=torch.float64) * 3
    label = torch.randint(0, C, (50, ), generator=g)
    assert len(ce_kernels.row_blocks(pred)) > 1
    for kind in ('cpu', 'cuda'):
        results = []
        for fast in (True, False):
            x = pred.clone().requires_grad_()
            with mmloss.fast_paths(fast), dispatch.pretend_device(kind):
                out = softmax_cross_entropy(x, label, reduction='sum')
            out.backward()
            results.append((out.detach(), x.grad))
        assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)
        assert_close(results[0][1], results[1][1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('shape', [(6, C), (2, C, 3)])
def test_a_bad_label_on_the_plain_path_is_named(monkeypatch, shape):
    """On the CPU the plain path leaves the label check to F.cross_entropy
    (no pass over the labels first); a label out of range still raises a
    ValueError naming the loss and the label."""
    monkeypatch.undo()
    pred = torch.randn(*shape)
    label = torch.zeros(shape[:1] + shape[2:], dtype=torch.long)
    for bad in (C, -3):
        label.view(-1)[1] = bad
        with pytest.raises(ValueError, match=f'CrossEntropyLoss.*{bad}'):
            mmloss.CrossEntropyLoss()(pred, label)
    label.view(-1)[1] = -100
    assert torch.isfinite(mmloss.CrossEntropyLoss()(pred, label))


# ---------------------------------------------------------------------------
# issue 14: every integer label dtype, integer logits refused
# ---------------------------------------------------------------------------
INTEGER_DTYPES = [torch.int8, torch.int16, torch.int32, torch.int64,
                  torch.uint8]


@pytest.mark.parametrize('dtype', INTEGER_DTYPES)
@pytest.mark.parametrize('fast', [True, False])
def test_every_integer_label_dtype(dtype, fast):
    """Labels of any integer dtype give the int64 result, on the fast and
    the plain path (the plain path crashed inside F.cross_entropy for
    int8/16/32 after the checks had accepted them)."""
    g = torch.Generator().manual_seed(4)
    pred = torch.randn(12, C, generator=g)
    label = torch.randint(0, C, (12, ), generator=g)
    modules = [mmloss.CrossEntropyLoss(),
               mmloss.CrossEntropyLoss(use_sigmoid=True),
               mmloss.CrossEntropyCustomLoss(num_classes=C - 1)]
    for module in modules:
        with mmloss.fast_paths(fast):
            ref, ref_grad = value_and_grad(module, pred, label)
            out, grad = value_and_grad(module, pred, label.to(dtype))
        assert_close(out, ref, rtol=1e-6, atol=0,
                     what=f'{module.loss_name} {dtype}')
        assert_close(grad, ref_grad, rtol=1e-6, atol=0)
    masks = torch.randn(12, C, 3, 3, generator=g)
    mask_target = torch.rand(12, 3, 3, generator=g)
    mask_loss = mmloss.CrossEntropyLoss(use_mask=True)
    assert_close(mask_loss(masks, mask_target, label.to(dtype)),
                 mask_loss(masks, mask_target, label), rtol=1e-6, atol=0)


def value_and_grad(module, pred, label):
    x = pred.clone().requires_grad_()
    out = module(x, label)
    out.backward()
    return out.detach(), x.grad


@pytest.mark.parametrize('dtype', [torch.int64, torch.int32, torch.uint8,
                                   torch.bool])
def test_integer_logits_are_refused(dtype):
    """Integer (or bool) logits raise a TypeError naming the loss, in
    every mode, never a silent cast."""
    pred = torch.ones(4, C, dtype=dtype)
    label = torch.tensor([0, 1, 2, 3])
    cases = [(mmloss.CrossEntropyLoss(), (pred, label)),
             (mmloss.CrossEntropyLoss(use_sigmoid=True), (pred, label)),
             (mmloss.CrossEntropyCustomLoss(num_classes=C - 1),
              (pred, label)),
             (mmloss.CrossEntropyLoss(use_mask=True),
              (torch.ones(4, C, 3, 3, dtype=dtype), torch.rand(4, 3, 3),
               label))]
    for module, args in cases:
        with pytest.raises(TypeError,
                           match=rf'^{module.loss_name}: pred must be a '
                           rf'floating point tensor, but has dtype {dtype}'):
            module(*args)
