"""tools/plot_losses.py: specs, adapters, sweeps and the written PNGs."""
import glob
import importlib.util
import math
import os.path as osp
import subprocess
import sys

import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(REPO, 'tools', 'plot_losses.py')
FIGURES = osp.join(REPO, 'docs', 'figures')
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def load_tool():
    spec = importlib.util.spec_from_file_location('plot_losses', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pl = load_tool()


def needs(*names):
    missing = [n for n in names if n not in pl.registered_losses()]
    return pytest.mark.skipif(bool(missing),
                              reason=f'not registered yet: {missing}')


def assert_png(path):
    with open(path, 'rb') as f:
        assert f.read(8) == PNG_SIGNATURE, path
    assert osp.getsize(path) > 1000
    import matplotlib.image
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 100


@pytest.mark.parametrize('text, name, kwargs', [
    ('FocalLoss', 'FocalLoss', {}),
    ('FocalLoss:gamma=2,alpha=0.5', 'FocalLoss', {'gamma': 2, 'alpha': 0.5}),
    ('MPDIoULoss:img_size=(320, 320),eps=1e-6', 'MPDIoULoss',
     {'img_size': (320, 320), 'eps': 1e-6}),
    ('IoULoss:mode=linear', 'IoULoss', {'mode': 'linear'}),
    ('IoULoss:mode="linear"', 'IoULoss', {'mode': 'linear'}),
    ('FocalLoss(gamma=0.5, alpha=0.25)', 'FocalLoss',
     {'gamma': 0.5, 'alpha': 0.25}),
])
def test_parse_spec(text, name, kwargs):
    spec = pl.parse_spec(text)
    assert (spec.name, spec.kwargs) == (name, kwargs)


@pytest.mark.parametrize('text', ['FocalLoss:gamma', 'Focal-Loss',
                                  'FocalLoss(2)', 'FocalLoss(gamma=x+1)'])
def test_parse_spec_rejects_garbage(text):
    with pytest.raises(pl.PlotLossesError, match='plot_losses'):
        pl.parse_spec(text)


def test_spec_label_names_the_arguments():
    assert pl.parse_spec('FocalLoss:gamma=0.5').label == \
        'FocalLoss(gamma=0.5)'
    assert pl.parse_spec('GIoULoss').label == 'GIoULoss'


def test_unknown_loss_fails_listing_the_registered_ones(tmp_path):
    with pytest.raises(pl.PlotLossesError) as exc:
        pl.plot_losses(['NoSuchLoss'], str(tmp_path))
    message = str(exc.value)
    assert "unknown loss 'NoSuchLoss'" in message
    assert 'FocalLoss' in message
    assert not list(tmp_path.iterdir())


def test_loss_without_adapter_fails_listing_the_plottable_ones(tmp_path):
    unplottable = [n for n in pl.registered_losses()
                   if pl.adapter_for(n) is None]
    if not unplottable:
        pytest.skip('every registered loss is plottable')
    with pytest.raises(pl.PlotLossesError, match='no plot adapter') as exc:
        pl.plot_losses([unplottable[0]], str(tmp_path))
    assert 'FocalLoss' in str(exc.value)


def test_arguments_the_loss_rejects_fail_clearly(tmp_path):
    with pytest.raises(pl.PlotLossesError,
                       match=r'cannot build FocalLoss\(gamma=-1\)'):
        pl.plot_losses(['FocalLoss:gamma=-1'], str(tmp_path))
    with pytest.raises(pl.PlotLossesError, match='cannot build FocalLoss'):
        pl.plot_losses(['FocalLoss:no_such_argument=1'], str(tmp_path))


def test_no_names_and_bad_options_fail_clearly(tmp_path):
    with pytest.raises(pl.PlotLossesError, match='name at least one loss'):
        pl.plot_losses([], str(tmp_path))
    with pytest.raises(pl.PlotLossesError, match="unknown sweep 'scale'"):
        pl.plot_losses(['GIoULoss'], str(tmp_path), sweeps=['scale'])
    with pytest.raises(pl.PlotLossesError, match='positive-target'):
        pl.plot_losses(['FocalLoss'], str(tmp_path), positive_target=0)


def curves(name, **kwargs):
    module, adapter = pl.build(pl.LossSpec(name, kwargs))
    return pl.classification_curves(module, adapter, num=50)


def test_sigmoid_cross_entropy_by_hand():
    c = curves('CrossEntropyLoss')  # the adapter sets use_sigmoid=True
    p = c['p']
    torch.testing.assert_close(c['pos_loss'], -torch.log(p))
    torch.testing.assert_close(c['neg_loss'], -torch.log1p(-p))
    torch.testing.assert_close(c['pos_grad'], p - 1)
    torch.testing.assert_close(c['neg_grad'], p)


@pytest.mark.parametrize('gamma', [0.0, 2.0, 5.0])
def test_focal_loss_and_gradient_by_hand(gamma):
    alpha = 0.25
    c = curves('FocalLoss', gamma=gamma, alpha=alpha)
    x = torch.logit(c['p']).requires_grad_(True)
    p = x.sigmoid()
    pos = -alpha * (1 - p)**gamma * torch.log(p)
    neg = -(1 - alpha) * p**gamma * torch.log1p(-p)
    pos_grad, = torch.autograd.grad(pos.sum(), x, retain_graph=True)
    neg_grad, = torch.autograd.grad(neg.sum(), x)
    torch.testing.assert_close(c['pos_loss'], pos.detach())
    torch.testing.assert_close(c['neg_loss'], neg.detach())
    torch.testing.assert_close(c['pos_grad'], pos_grad)
    torch.testing.assert_close(c['neg_grad'], neg_grad)


@needs('GHMC')
def test_ghmc_down_weights_the_crowded_easy_bin():
    c = curves('GHMC')
    bce = -torch.log1p(-c['p'])
    weight = c['neg_loss'] / bce
    easy = weight[c['p'] < 0.1]
    moderate = weight[(c['p'] > 0.2) & (c['p'] < 0.8)]
    # The context batch crowds the first bin: its weight is far smaller.
    assert easy.max() * 10 < moderate.min()


GT = pl.gt_box(32.0)


def box(name, sweep, **kwargs):
    module, adapter = pl.build(pl.LossSpec(name, kwargs))
    return pl.box_curves(module, adapter, sweep, GT, num=61)


@needs('GIoULoss')
def test_giou_equals_one_minus_iou_when_sliding_along_x():
    c = box('GIoULoss', 'iou')
    # Sliding an equal box along x: the enclosing box is the union.
    torch.testing.assert_close(c['loss'], 1 - c['x'], atol=1e-5, rtol=0)
    assert c['x'][0] == pytest.approx(1.0)
    assert float(c['x'][-1]) < 0.02


def test_iou_sweep_x_is_the_iou_of_a_shifted_box():
    pred, iou, label = pl.box_sweep('iou', GT, num=11)
    d = pred[:, 0] - GT[0, 0]
    torch.testing.assert_close(iou, (32 - d) / (32 + d))
    assert label == 'IoU(pred, gt)'


@needs('IoULoss', 'GIoULoss')
def test_offset_sweep_iou_plateaus_giou_keeps_a_gradient():
    iou = box('IoULoss', 'offset', mode='linear')
    giou = box('GIoULoss', 'offset')
    apart = iou['x'] > 1.05
    assert torch.allclose(iou['loss'][apart], torch.ones(1, dtype=torch.float64))
    assert (iou['grad'][apart] == 0).all()
    assert (giou['grad'][apart] > 0).all()
    assert (giou['loss'][apart].diff() > 0).all()


@needs('DIoULoss')
def test_aspect_sweep_keeps_centre_and_area():
    pred, r, _ = pl.box_sweep('aspect', GT, num=9)
    wh = pred[:, 2:] - pred[:, :2]
    torch.testing.assert_close(wh.prod(dim=1), torch.full((9,), 1024.0,
                                                          dtype=torch.float64))
    torch.testing.assert_close(r, wh[:, 0] / wh[:, 1])
    c = box('DIoULoss', 'aspect')
    mid = len(c['x']) // 2
    assert float(c['x'][mid]) == pytest.approx(1.0)
    assert float(c['loss'][mid]) == pytest.approx(0.0, abs=1e-5)
    assert float(c['loss'][0]) > 0.3


@needs('SmoothL1Loss')
def test_smooth_l1_runs_on_deltas():
    c = box('SmoothL1Loss', 'offset')
    t = c['x']  # dx = offset / width, the other deltas are 0
    expected = torch.where(t < 1, 0.5 * t**2, t - 0.5)
    torch.testing.assert_close(c['loss'], expected)


def test_encode_deltas():
    ref = torch.tensor([[0., 0., 10., 20.]])
    boxes = torch.tensor([[5., 0., 15., 40.]])
    torch.testing.assert_close(
        pl.encode_deltas(boxes, ref),
        torch.tensor([[0.5, 0.5, 0.0, math.log(2)]]))


def test_every_plottable_loss_gives_finite_curves():
    for name in pl.plottable_losses():
        module, adapter = pl.build(pl.LossSpec(name, {}))
        if adapter.kind == 'cls':
            c = pl.classification_curves(module, adapter, num=30)
            values = [c['pos_loss'], c['neg_loss'], c['pos_grad'],
                      c['neg_grad']]
        else:
            values = []
            for sweep in pl.SWEEPS:
                c = pl.box_curves(module, adapter, sweep, GT, num=30)
                values += [c['loss'], c['grad']]
        for v in values:
            assert torch.isfinite(v).all(), name


def test_writes_one_png_per_figure(tmp_path):
    names = ['FocalLoss:gamma=0.0', 'FocalLoss:gamma=2.0']
    boxes = [n for n in ('GIoULoss', 'CIoULoss')
             if n in pl.registered_losses()]
    written = pl.plot_losses(names + boxes, str(tmp_path), prefix='t_',
                             sweeps=['iou', 'aspect'])
    expected = ['t_cls_probability.png']
    if boxes:
        expected += ['t_box_iou.png', 't_box_aspect.png']
    assert [osp.basename(p) for p in written] == expected
    for path in written:
        assert_png(path)


def test_command_line(tmp_path):
    out = tmp_path / 'out'
    done = subprocess.run(
        [sys.executable, TOOL, 'FocalLoss:gamma=1', 'FocalLoss(gamma=3)',
         '--out-dir', str(out), '--linear'],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f'wrote {out / "cls_probability.png"}'
    assert_png(out / 'cls_probability.png')

    done = subprocess.run(
        [sys.executable, TOOL, 'FocalLoss', 'NoSuchLoss', '--out-dir',
         str(out / 'x')], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "unknown loss 'NoSuchLoss'; registered losses:" in done.stderr
    assert not (out / 'x').exists()


def test_list_option(capsys):
    assert pl.main(['--list']) == 0
    listed = capsys.readouterr().out.split()
    assert 'FocalLoss' in listed
    assert listed == pl.plottable_losses()


def test_committed_figures_are_small_valid_pngs():
    for path in glob.glob(osp.join(FIGURES, '*.png')):
        assert osp.getsize(path) < 200 * 1024, path
        assert_png(path)


def test_family_token_expands_to_its_plottable_losses(tmp_path):
    focal = pl.expand_families(['@focal'])
    assert 'FocalLoss' in focal and 'Poly1FocalLoss' in focal
    assert pl.expand_families(['GIoULoss', '@focal']) == ['GIoULoss'] + focal
    assert pl.expand_families(['@no_such'], strict=False) == []
    with pytest.raises(pl.PlotLossesError,
                       match="no plottable loss in family 'no_such'"):
        pl.plot_losses(['@no_such'], str(tmp_path))
