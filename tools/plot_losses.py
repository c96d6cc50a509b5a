"""Loss landscapes: loss and gradient of registered losses, several per figure.

Classification losses are swept over the predicted probability ``p`` of one
sigmoid class, for a positive and a negative sample; the gradient is the
derivative with respect to the logit (what the network receives). Box losses
are swept over one predicted box against one ground-truth box: against IoU
(the prediction slides off the box), against the centre offset (sliding on,
past the point where the boxes stop overlapping) and against the aspect
mismatch (same centre and area, different width/height ratio); the gradient
is the norm of the derivative with respect to the four predicted coordinates,
in pixels. Losses are chosen by name, with constructor arguments after a
colon::

    python tools/plot_losses.py FocalLoss:gamma=0 FocalLoss:gamma=2 GHMC \\
        VarifocalLoss QualityFocalLoss --out-dir work_dirs/landscapes
    python tools/plot_losses.py GIoULoss DIoULoss CIoULoss SmoothL1Loss \\
        --sweeps iou offset --prefix iou_ --out-dir work_dirs/landscapes
    python tools/plot_losses.py --preset readme --out-dir docs/figures
    python tools/plot_losses.py --list           # the plottable losses

``Name(k=v, ...)`` works too, and ``@iou`` names every plottable loss of a
family. Writes ``<prefix>cls_probability.png`` when
classification losses are given, and ``<prefix>box_<sweep>.png`` per box
sweep when box losses are given.

How each loss is fed is in :data:`ADAPTERS` (by name, then by family in
:data:`FAMILY_ADAPTERS`): a loss that is not a per-sample classification or
box loss (Seesaw, KD, Dice, DFL, ...) has no adapter and is refused with the
list of plottable ones.
"""
import argparse
import ast
import math
import os
import os.path as osp
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import torch  # noqa: E402

import mmloss  # noqa: E402,F401  (registers every loss)
from mmloss.registry import MODELS  # noqa: E402

SWEEPS = ('iou', 'offset', 'aspect')
LOSSES_PACKAGE = 'mmloss.losses.'


class PlotLossesError(ValueError):
    """A problem with the command line, reported as one clear line."""


# --------------------------------------------------------------------------
# Adapters: how a probability sweep or a box sweep is fed to each loss.
# A classification call gets logits x (M, 1) (requires grad), a bool mask
# ``positive`` (M,) and the soft target ``q`` of positives; a box call gets
# predicted and ground-truth boxes (K, 4). Both return the per-sample loss.
# --------------------------------------------------------------------------


def _rows(loss: torch.Tensor, n: int) -> torch.Tensor:
    return loss.reshape(n, -1).sum(dim=1)


def cls_labels(module, x, positive, q):
    """Integer labels: class 0 for positives, background (1) otherwise."""
    labels = torch.where(positive, 0, 1)
    return _rows(module(x, labels, reduction_override='none'), len(x))


def cls_soft_target(module, x, positive, q):
    """An (M, 1) target: the IoU-aware score ``q`` for positives, else 0."""
    target = torch.where(positive, q, 0.0).to(x.dtype)[:, None]
    return _rows(module(x, target, reduction_override='none'), len(x))


def cls_label_and_score(module, x, positive, q):
    """QFL's ``(labels, scores)`` target."""
    labels = torch.where(positive, 0, 1)
    score = torch.where(positive, q, 0.0).to(x.dtype)
    return _rows(module(x, (labels, score), reduction_override='none'),
                 len(x))


def cls_heatmap(module, x, positive, q):
    """A heatmap loss on probabilities: peak 1 for positives, 0 else."""
    target = positive.to(x.dtype)[:, None]
    return _rows(module(x.sigmoid(), target, reduction_override='none'),
                 len(x))


# GHM-C weighs each sample by the inverse density of its gradient norm
# g = |p - t| in the batch, so a lone uniform sweep would show a flat
# density. The sweep is scored inside a batch shaped like a dense detector's
# (GHM paper, Fig. 1): mostly easy negatives, a spread of moderate samples
# and a few outliers; the sweep itself is a small part of it.
GHM_CONTEXT_SIZE = 50000
GHM_CONTEXT = 'batch of 50k: 95% easy, 4% moderate, 1% outliers'


def ghm_context(dtype):
    """Logits of the negative samples around the sweep (fixed seed)."""
    gen = torch.Generator().manual_seed(0)
    n_moderate, n_outlier = GHM_CONTEXT_SIZE * 4 // 100, \
        GHM_CONTEXT_SIZE // 100
    n_easy = GHM_CONTEXT_SIZE - n_moderate - n_outlier
    g = torch.cat([
        torch.rand(n_easy, generator=gen, dtype=torch.float64) * 0.02,
        0.1 + torch.rand(n_moderate, generator=gen, dtype=torch.float64) * 0.8,
        0.95 + torch.rand(n_outlier, generator=gen, dtype=torch.float64) * 0.04
    ])
    return torch.logit(g.clamp(1e-4, 1 - 1e-4)).to(dtype)[:, None]


def cls_ghm(module, x, positive, q):
    context = ghm_context(x.dtype)
    logits = torch.cat([x, context])
    target = torch.cat([positive.to(x.dtype),
                        torch.zeros(len(context), dtype=x.dtype)])[:, None]
    loss = module(logits, target, torch.ones_like(target),
                  reduction_override='none')
    return _rows(loss[:len(x)], len(x))


def box_direct(module, pred, target):
    """Boxes (x1, y1, x2, y2) in, per-box loss out."""
    return _rows(module(pred, target, reduction_override='none'), len(pred))


def encode_deltas(boxes, reference):
    """DeltaXYWH encoding (means 0, stds 1, as RetinaNet) of ``boxes``."""
    wh_b = boxes[:, 2:] - boxes[:, :2]
    wh_r = reference[:, 2:] - reference[:, :2]
    centre_b = (boxes[:, 2:] + boxes[:, :2]) / 2
    centre_r = (reference[:, 2:] + reference[:, :2]) / 2
    return torch.cat([(centre_b - centre_r) / wh_r, torch.log(wh_b / wh_r)],
                     dim=1)


def box_deltas(module, pred, target):
    """Element-wise regression losses on deltas against the gt box."""
    deltas = encode_deltas(pred, target)
    return _rows(module(deltas, torch.zeros_like(deltas),
                        reduction_override='none'), len(pred))


def box_deltas_ghm(module, pred, target):
    deltas = encode_deltas(pred, target)
    return _rows(module(deltas, torch.zeros_like(deltas),
                        torch.ones_like(deltas), reduction_override='none'),
                 len(pred))


def prepare_wise(module):
    # Wise-IoU scales by the running mean of 1 - IoU: fix it, in eval mode.
    module.eval()
    if hasattr(module, 'running_mean'):
        module.running_mean.fill_(WISE_RUNNING_MEAN)


WISE_RUNNING_MEAN = 0.5


@dataclass(frozen=True)
class Adapter:
    """How to feed one loss: ``kind`` is ``'cls'`` or ``'box'``."""
    kind: str
    call: Callable
    defaults: Dict = field(default_factory=dict)  # shown in the label
    prepare: Optional[Callable] = None
    note: str = ''


ADAPTERS: Dict[str, Adapter] = {
    # classification: probability sweep
    'CrossEntropyLoss': Adapter('cls', cls_labels, {'use_sigmoid': True}),
    'FocalLoss': Adapter('cls', cls_labels),
    'Poly1FocalLoss': Adapter('cls', cls_labels),
    'GHMC': Adapter('cls', cls_ghm, note=GHM_CONTEXT),
    'VarifocalLoss': Adapter('cls', cls_soft_target),
    'QualityFocalLoss': Adapter('cls', cls_label_and_score),
    'GaussianFocalLoss': Adapter('cls', cls_heatmap,
                                 note='on sigmoid(x) as heatmap'),
    # boxes: IoU family and friends
    'IoULoss': Adapter('box', box_direct),
    'GIoULoss': Adapter('box', box_direct),
    'DIoULoss': Adapter('box', box_direct),
    'CIoULoss': Adapter('box', box_direct),
    'EIoULoss': Adapter('box', box_direct),
    'SIoULoss': Adapter('box', box_direct),
    'BoundedIoULoss': Adapter('box', box_direct),
    'AlphaIoULoss': Adapter('box', box_direct),
    'FocalEIoULoss': Adapter('box', box_direct),
    'MPDIoULoss': Adapter('box', box_direct),
    'VariantIoULoss': Adapter('box', box_direct),
    'WiseIoULoss': Adapter('box', box_direct, prepare=prepare_wise,
                           note=f'running mean 1-IoU = {WISE_RUNNING_MEAN}'),
    'NWDLoss': Adapter('box', box_direct),
    # boxes: element-wise regression on encoded deltas
    'L1Loss': Adapter('box', box_deltas, note='on deltas'),
    'SmoothL1Loss': Adapter('box', box_deltas, note='on deltas'),
    'BalancedL1Loss': Adapter('box', box_deltas, note='on deltas'),
    'MSELoss': Adapter('box', box_deltas, note='on deltas'),
    'GHMR': Adapter('box', box_deltas_ghm, note='on deltas'),
}

# Losses of these families that are not named above take boxes directly.
FAMILY_ADAPTERS: Dict[str, Adapter] = {
    'iou': Adapter('box', box_direct),
    'wasserstein': Adapter('box', box_direct),
}

PRESETS = {
    'readme': [
        ('', [
            'CrossEntropyLoss', 'FocalLoss:gamma=1.0', 'FocalLoss:gamma=2.0',
            'FocalLoss:gamma=5.0', 'Poly1FocalLoss', 'GHMC',
            'VarifocalLoss', 'QualityFocalLoss'
        ]),
        ('iou_', ['IoULoss:mode="linear"', 'GIoULoss', 'DIoULoss',
                  'CIoULoss', 'EIoULoss', 'SIoULoss',
                  'SIoULoss:neg_gamma=True']),
        ('more_', ['GIoULoss', 'AlphaIoULoss', 'WiseIoULoss', '@wasserstein',
                   'BoundedIoULoss', 'BalancedL1Loss', 'SmoothL1Loss']),
    ],
}


# --------------------------------------------------------------------------
# Command-line specs: Name, Name:k=v,k=v or Name(k=v, ...)
# --------------------------------------------------------------------------


@dataclass
class LossSpec:
    name: str
    kwargs: Dict

    @property
    def label(self) -> str:
        args = ', '.join(f'{k}={v!r}' for k, v in self.kwargs.items())
        return f'{self.name}({args})' if args else self.name


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word: a string


def _split_top_level(text: str) -> List[str]:
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in '([{':
            depth += 1
        elif char in ')]}':
            depth -= 1
        elif char == ',' and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_spec(spec: str) -> LossSpec:
    """``'FocalLoss:gamma=2,alpha=0.5'`` or ``'FocalLoss(gamma=2)'``."""
    spec = spec.strip()
    if '(' in spec and spec.endswith(')') and (
            ':' not in spec or spec.index('(') < spec.index(':')):
        try:
            call = ast.parse(spec, mode='eval').body
            if not isinstance(call, ast.Call) or call.args or not isinstance(
                    call.func, ast.Name):
                raise ValueError
            return LossSpec(call.func.id, {
                kw.arg: ast.literal_eval(kw.value) for kw in call.keywords})
        except (ValueError, SyntaxError):
            raise PlotLossesError(
                f'plot_losses: cannot read {spec!r}; write Name(k=v, ...) '
                'with literal values') from None
    name, _, rest = spec.partition(':')
    kwargs = {}
    for item in _split_top_level(rest):
        key, eq, value = item.partition('=')
        if not eq or not key.strip().isidentifier():
            raise PlotLossesError(
                f'plot_losses: cannot read {item!r} in {spec!r}; write '
                'Name:key=value,key=value')
        kwargs[key.strip()] = _literal(value.strip())
    if not name.isidentifier():
        raise PlotLossesError(f'plot_losses: {name!r} is not a loss name')
    return LossSpec(name, kwargs)


def family_of(cls: type) -> str:
    return cls.__module__[len(LOSSES_PACKAGE):].split('.')[0]


def expand_families(specs: Sequence[str], strict: bool = True) -> List[str]:
    """``@family`` stands for every plottable loss of that family.

    Raises:
        PlotLossesError: (``strict``) a family with no plottable loss.
    """
    out = []
    for spec in specs:
        if not spec.startswith('@'):
            out.append(spec)
            continue
        family = spec[1:]
        names = sorted(n for n, cls in registered_losses().items()
                       if family_of(cls) == family and adapter_for(n))
        if strict and not names:
            families = sorted({family_of(registered_losses()[n])
                               for n in plottable_losses()})
            raise PlotLossesError(
                f'plot_losses: no plottable loss in family {family!r}; '
                f'families: {", ".join(families)}')
        out += names
    return out


def registered_losses() -> Dict[str, type]:
    return {
        name: cls for name, cls in MODELS.module_dict.items()
        if getattr(cls, '__module__', '').startswith(LOSSES_PACKAGE)
    }


def adapter_for(name: str) -> Optional[Adapter]:
    if name in ADAPTERS:
        return ADAPTERS[name]
    cls = registered_losses().get(name)
    if cls is None:
        return None
    return FAMILY_ADAPTERS.get(family_of(cls))


def plottable_losses() -> List[str]:
    return sorted(n for n in registered_losses() if adapter_for(n))


def build(spec: LossSpec) -> Tuple[torch.nn.Module, Adapter]:
    """The loss module of ``spec`` and its adapter.

    Raises:
        PlotLossesError: unknown name, no adapter, or rejected arguments.
    """
    losses = registered_losses()
    if spec.name not in losses:
        raise PlotLossesError(
            f'plot_losses: unknown loss {spec.name!r}; registered losses: '
            f'{", ".join(sorted(losses))}')
    adapter = adapter_for(spec.name)
    if adapter is None:
        raise PlotLossesError(
            f'plot_losses: no plot adapter for {spec.name!r} (not a '
            'per-sample classification or box loss); plottable: '
            f'{", ".join(plottable_losses())}')
    kwargs = {**adapter.defaults, **spec.kwargs}
    try:
        module = losses[spec.name](**kwargs)
    except (TypeError, ValueError) as exc:
        raise PlotLossesError(
            f'plot_losses: cannot build {spec.label}: {exc}') from None
    if adapter.prepare:
        adapter.prepare(module)
    return module, adapter


def _label(spec: LossSpec, adapter: Adapter) -> str:
    shown = {**adapter.defaults, **spec.kwargs}
    label = LossSpec(spec.name, shown).label
    return f'{label} [{adapter.note}]' if adapter.note else label


# --------------------------------------------------------------------------
# Sweeps
# --------------------------------------------------------------------------


def classification_curves(module, adapter, num=400, positive_target=1.0):
    """Loss and d loss / d logit against ``p`` for a positive and a negative.

    Returns:
        dict of float64 tensors: ``p`` (num,), and ``pos_loss``,
        ``pos_grad``, ``neg_loss``, ``neg_grad`` (num,).
    """
    p = torch.linspace(1e-3, 1 - 1e-3, num, dtype=torch.float64)
    x = torch.logit(p).repeat(2)[:, None].requires_grad_(True)
    positive = torch.arange(2 * num) < num
    loss = adapter.call(module.double(), x, positive, positive_target)
    loss.sum().backward()
    grad = x.grad[:, 0]
    loss = loss.detach()
    return dict(p=p, pos_loss=loss[:num], pos_grad=grad[:num],
                neg_loss=loss[num:], neg_grad=grad[num:])


def gt_box(size: float, aspect: float = 1.0) -> torch.Tensor:
    """One ground-truth box of area ``size**2`` centred at (200, 200)."""
    w, h = size * math.sqrt(aspect), size / math.sqrt(aspect)
    return torch.tensor([[200 - w / 2, 200 - h / 2, 200 + w / 2,
                          200 + h / 2]], dtype=torch.float64)


def box_sweep(sweep: str, gt: torch.Tensor, num: int = 300,
              angle: float = 0.0):
    """Predicted boxes of one sweep, the x values and the x-axis label.

    ``iou`` and ``offset`` move a copy of ``gt`` by ``d`` along the
    direction ``angle`` (degrees from the x axis); ``iou`` keeps the
    overlapping part and is plotted against the IoU, ``offset`` goes on to
    2.5 box widths. ``aspect`` keeps centre and area and sets w/h = r.
    """
    x1, y1, x2, y2 = gt[0].tolist()
    w, h = x2 - x1, y2 - y1
    ux, uy = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    if sweep in ('iou', 'offset'):
        if sweep == 'iou':
            # Overlap ends where the shift covers the box along either axis.
            reach = min(w / max(abs(ux), 1e-12), h / max(abs(uy), 1e-12))
            d = torch.linspace(0, 0.98 * reach, num, dtype=torch.float64)
        else:
            d = torch.linspace(0, 2.5 * w, num, dtype=torch.float64)
        shift = torch.stack([d * ux, d * uy, d * ux, d * uy], dim=1)
        pred = gt + shift
        if sweep == 'iou':
            xs = _iou(pred, gt)
            return pred, xs, 'IoU(pred, gt)'
        return pred, d / w, 'centre offset / gt width'
    if sweep == 'aspect':
        r = torch.logspace(math.log10(0.25), math.log10(4), num,
                           dtype=torch.float64)
        area = w * h
        pw, ph = torch.sqrt(area * r), torch.sqrt(area / r)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        pred = torch.stack([cx - pw / 2, cy - ph / 2, cx + pw / 2,
                            cy + ph / 2], dim=1)
        return pred, r * (h / w), 'aspect mismatch (w/h of pred) / (w/h of gt)'
    raise PlotLossesError(f'plot_losses: unknown sweep {sweep!r}; '
                          f'choose from {", ".join(SWEEPS)}')


def _iou(a, b):
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area_a = (a[:, 2:] - a[:, :2]).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(dim=1)
    return inter / (area_a + area_b - inter)


def box_curves(module, adapter, sweep, gt, num=300, angle=0.0):
    """Loss and the norm of d loss / d pred along one sweep."""
    pred, xs, xlabel = box_sweep(sweep, gt, num, angle)
    pred = pred.clone().requires_grad_(True)
    target = gt.expand_as(pred).clone()
    loss = adapter.call(module.double(), pred, target)
    loss.sum().backward()
    return dict(x=xs, loss=loss.detach(), grad=pred.grad.norm(dim=1),
                xlabel=xlabel)


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------


def save_png(fig, path, dpi=72):
    """Save as a 256-colour PNG: a third of the size, same look."""
    import io

    from PIL import Image
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=dpi)
    plt.close(fig)
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert('RGB').quantize(256).save(path, optimize=True)


def _title(head: str, labels: Sequence[str]) -> str:
    body = textwrap.fill('; '.join(labels), 110)
    return f'{head}\n{body}'


def _style(index: int):
    return dict(color=plt.get_cmap('tab10')(index % 10),
                linestyle=('-', '--', '-.', ':')[(index // 10) % 4])


def plot_classification(items, path, positive_target=1.0, num=400,
                        linear=False):
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.4), sharex=True)
    labels = []
    for index, (spec, module, adapter) in enumerate(items):
        c = classification_curves(module, adapter, num, positive_target)
        label = _label(spec, adapter)
        labels.append(label)
        style = _style(index)
        axes[0, 0].plot(c['p'], c['pos_loss'], label=label, **style)
        axes[0, 1].plot(c['p'], c['pos_grad'].abs(), **style)
        axes[1, 0].plot(c['p'], c['neg_loss'], **style)
        axes[1, 1].plot(c['p'], c['neg_grad'].abs(), **style)
    target = 'target 1' if positive_target == 1 else \
        f'soft target {positive_target:g} (VFL/QFL)'
    for row, who in enumerate([f'positive ({target})', 'negative (target 0)']):
        axes[row, 0].set_ylabel(f'loss, {who}')
        axes[row, 1].set_ylabel(f'|d loss / d logit|, {who}')
        for ax in axes[row]:
            ax.grid(True, alpha=0.3)
            if not linear:
                # Orders of magnitude are the point (focal on easy samples).
                ax.set_yscale('log')
                ax.set_ylim(bottom=1e-4)
    for ax in axes[1]:
        ax.set_xlabel('predicted probability p = sigmoid(logit)')
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc='lower center',
               ncol=2, fontsize='small', frameon=False)
    fig.suptitle(_title('Classification losses against the predicted '
                        'probability (one sigmoid class)', labels),
                 fontsize='medium')
    fig.tight_layout(rect=(0, 0.04 + 0.022 * math.ceil(len(items) / 2), 1,
                           1))
    save_png(fig, path)


SWEEP_HEADS = {
    'iou': 'against IoU (prediction slides off the gt box)',
    'offset': 'against centre offset (past the end of the overlap)',
    'aspect': 'against aspect mismatch (same centre and area)',
}


def plot_box(items, sweep, path, gt, angle=0.0, num=300):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    labels = []
    xlabel = ''
    for index, (spec, module, adapter) in enumerate(items):
        c = box_curves(module, adapter, sweep, gt, num, angle)
        label = _label(spec, adapter)
        labels.append(label)
        xlabel = c['xlabel']
        style = _style(index)
        axes[0].plot(c['x'], c['loss'], label=label, **style)
        axes[1].plot(c['x'], c['grad'], **style)
    axes[0].set_ylabel('loss')
    axes[1].set_ylabel('|d loss / d pred box| (per pixel)')
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        if sweep == 'aspect':
            ax.set_xscale('log')
            ax.set_xticks([0.25, 0.5, 1, 2, 4])
            ax.xaxis.set_major_formatter(
                matplotlib.ticker.FuncFormatter(lambda v, _: f'{v:g}'))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    w, h = (gt[0, 2:] - gt[0, :2]).tolist()
    setting = f'gt {w:g}x{h:g} px'
    if sweep != 'aspect' and angle:
        setting += f', moved at {angle:g} deg'
    fig.legend(*axes[0].get_legend_handles_labels(), loc='lower center',
               ncol=3, fontsize='small', frameon=False)
    fig.suptitle(_title(f'Box losses {SWEEP_HEADS[sweep]}, {setting}',
                        labels), fontsize='medium')
    fig.tight_layout(rect=(0, 0.03 + 0.045 * math.ceil(len(items) / 3), 1,
                           1))
    save_png(fig, path)


def plot_losses(specs: Sequence[str], out_dir: str, prefix: str = '',
                sweeps: Sequence[str] = SWEEPS, box_size: float = 32.0,
                box_aspect: float = 1.0, angle: float = 0.0,
                positive_target: float = 1.0,
                linear: bool = False) -> List[str]:
    """Draw the figures of ``specs``; returns the written paths.

    Raises:
        PlotLossesError: no names, an unknown or unplottable name, arguments
            the loss rejects, or an unknown sweep.
    """
    if not specs:
        raise PlotLossesError('plot_losses: name at least one loss; '
                              f'plottable: {", ".join(plottable_losses())}')
    for sweep in sweeps:
        if sweep not in SWEEPS:
            raise PlotLossesError(f'plot_losses: unknown sweep {sweep!r}; '
                                  f'choose from {", ".join(SWEEPS)}')
    if not 0 < positive_target <= 1:
        raise PlotLossesError('plot_losses: --positive-target must lie in '
                              f'(0, 1], got {positive_target}')
    if box_size <= 0 or box_aspect <= 0:
        raise PlotLossesError('plot_losses: --box-size and --box-aspect '
                              'must be positive')
    parsed = []
    for spec in specs:
        if isinstance(spec, str):
            parsed += [parse_spec(s) for s in expand_families([spec])]
        else:
            parsed.append(spec)
    built = [(spec, *build(spec)) for spec in parsed]
    cls_items = [b for b in built if b[2].kind == 'cls']
    box_items = [b for b in built if b[2].kind == 'box']
    os.makedirs(out_dir, exist_ok=True)
    written = []
    if cls_items:
        path = osp.join(out_dir, f'{prefix}cls_probability.png')
        plot_classification(cls_items, path, positive_target,
                            linear=linear)
        written.append(path)
    if box_items:
        gt = gt_box(box_size, box_aspect)
        for sweep in sweeps:
            path = osp.join(out_dir, f'{prefix}box_{sweep}.png')
            plot_box(box_items, sweep, path, gt, angle)
            written.append(path)
    return written


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Plot loss and gradient of registered mmloss losses: '
        'classification losses against predicted probability, box losses '
        'against IoU, centre offset and aspect mismatch.')
    parser.add_argument(
        'losses', nargs='*', metavar='LOSS',
        help='Name, Name:key=value,..., "Name(key=value, ...)" or @family '
        '(every plottable loss of mmloss/losses/<family>.py)')
    parser.add_argument('--out-dir', default='work_dirs/loss_landscapes',
                        help='folder for the PNGs')
    parser.add_argument('--prefix', default='', help='file name prefix')
    parser.add_argument('--sweeps', nargs='+', default=list(SWEEPS),
                        help=f'box sweeps to draw (default: {" ".join(SWEEPS)})')
    parser.add_argument('--box-size', type=float, default=32.0,
                        help='sqrt of the gt box area in pixels (default 32)')
    parser.add_argument('--box-aspect', type=float, default=1.0,
                        help='w/h of the gt box (default 1)')
    parser.add_argument('--angle', type=float, default=0.0,
                        help='direction of the offset sweeps, degrees')
    parser.add_argument('--positive-target', type=float, default=1.0,
                        help='soft target of positives for VFL/QFL '
                        '(default 1)')
    parser.add_argument('--linear', action='store_true',
                        help='linear y axes for classification (default: '
                        'log)')
    parser.add_argument('--preset', choices=sorted(PRESETS),
                        help='draw a named set of figures (readme: the '
                        'README figures)')
    parser.add_argument('--list', action='store_true',
                        help='print the plottable losses and exit')
    return parser, parser.parse_args(argv)


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    if args.list:
        print('\n'.join(plottable_losses()))
        return 0
    if args.preset and args.losses:
        parser.error('give loss names or --preset, not both')
    groups = PRESETS[args.preset] if args.preset else [(args.prefix,
                                                         args.losses)]
    written = []
    try:
        for prefix, specs in groups:
            if args.preset:
                # A preset draws what is registered today.
                specs = [s for s in expand_families(specs, strict=False)
                         if parse_spec(s).name in registered_losses()]
                prefix = args.prefix + prefix
            written += plot_losses(specs, args.out_dir, prefix, args.sweeps,
                                   args.box_size, args.box_aspect,
                                   args.angle, args.positive_target,
                                   args.linear)
    except PlotLossesError as exc:
        parser.exit(2, f'{exc}\n')
    for path in written:
        print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
