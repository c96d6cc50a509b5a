"""The hostile-input sweep: every registered loss, every input kind it takes.

Each (loss, kind) runs one or more calls and classifies every outcome as

* ``'finite'``: a finite value connected to the graph whose gradient
  reaches the prediction and is finite (plus any dtype rule of the kind);
* ``'nan'``: a non-finite value (a non-finite input was not masked);
* ``'error'``: a ``ValueError``/``TypeError`` whose message names the loss;
* ``'overflow'``: a finite value whose half-precision gradient is Inf
  exactly where the true gradient (float64, same inputs) is past the
  dtype's largest finite number, and equal to it elsewhere: the gradient
  overflows as any autograd op's does, so a GradScaler sees it and skips
  the step (GaussianFocalLoss at fp16 probabilities of exactly 0 or 1:
  ``p**alpha / (1 - p + 1e-12)`` is ~1e12);
* ``'failure'``: anything else (a crash of another type, an error that does
  not name the loss, a finite value off the graph, a non-finite gradient, a
  dtype the half-precision rule does not allow).

A kind says which outcomes it allows: legitimate edge inputs ``'finite'``
(README, "What mmloss promises on hostile input"), non-finite inputs
``'nan'`` (never masked), invalid shapes and dtypes ``'error'``. Stateful
losses are also fed a bad batch (NaN, Inf, invalid) between good ones:
their state keeps no non-finite element and the next good batch is finite.

The inputs come from the shared :data:`tests.cases.CASES`; :data:`ROLES`
says what each loss's prediction and target are, so that the kinds know
which apply. A loss registered without a role (or stateful without being in
:data:`STATEFUL`) fails :func:`test_every_registered_loss_is_in_the_sweep`.
The default run uses 6 rows (and 0 and 1); the sizes that switch the fast
paths (1024 and 40000 rows) run behind the ``slow`` marker.

``tools/hostile_sweep.py`` runs the same kinds against mmdet's twins and
prints where mmdet and mmloss differ (a report, not a test).
"""
import contextlib
import copy
import dataclasses
from typing import Callable, Dict, List, Optional, Tuple

import pytest
import torch

from mmloss.registry import MODELS
from tests.cases import CASES, REGISTERED, value

#: Rows of the default sweep.
ROWS = 6
#: Rows that switch the fast paths, run behind the slow marker ...
SLOW_ROWS = (1024, 40000)
#: ... but at most these for a loss whose cost grows with rows squared.
MAX_ROWS = {'TripletLoss': 1024}


@dataclasses.dataclass(frozen=True)
class Roles:
    """What a loss's first two arguments are.

    pred: ``'boxes'`` (x1, y1, x2, y2), ``'logits'`` (any real number),
    ``'probabilities'`` (in [0, 1]) or ``'features'`` (any real number, no
    class meaning). target: ``'boxes'``, ``'labels'`` (class indices),
    ``'label_score'`` ((labels, scores) as in QFL), ``'soft'`` (a float
    target of any kind), ``'match'`` (0/1 integers), ``'identities'``
    (integer ids) or ``'map'`` (a second embedding map, AE loss).
    """
    pred: str
    target: str
    # False for element-wise regression (L1 family, GHMR): any number of
    # columns is valid, boxes are just four of them.
    geometric: bool = True


BOX = Roles('boxes', 'boxes')
LABELS = Roles('logits', 'labels')

ROLES: Dict[str, Roles] = {
    **{name: BOX for name in (
        'IoULoss', 'GIoULoss', 'DIoULoss', 'CIoULoss', 'SIoULoss',
        'EIoULoss', 'BoundedIoULoss', 'AlphaIoULoss', 'WiseIoULoss',
        'FocalEIoULoss', 'VariantIoULoss', 'MPDIoULoss', 'NWDLoss')},
    **{name: Roles('boxes', 'boxes', geometric=False) for name in (
        'L1Loss', 'SmoothL1Loss', 'BalancedL1Loss', 'MSELoss', 'GHMR')},
    **{name: LABELS for name in (
        'FocalLoss', 'Poly1FocalLoss', 'GHMC', 'CrossEntropyLoss',
        'CrossEntropyCustomLoss', 'SeesawLoss', 'FocalCustomLoss',
        'EQLV2Loss')},
    'VarifocalLoss': Roles('logits', 'soft'),
    'QualityFocalLoss': Roles('logits', 'label_score'),
    'DistributionFocalLoss': Roles('logits', 'soft'),
    'GaussianFocalLoss': Roles('probabilities', 'soft'),
    'MultiPosCrossEntropyLoss': Roles('logits', 'match'),
    'L2Loss': Roles('features', 'match'),
    'MarginL2Loss': Roles('features', 'match'),
    'TripletLoss': Roles('features', 'identities'),
    'AssociativeEmbeddingLoss': Roles('features', 'map'),
    'KnowledgeDistillationKLDivLoss': Roles('logits', 'soft'),
    'DiceLoss': Roles('logits', 'soft'),
}

#: Losses that keep state across calls: the names of that state, and the
#: arguments that turn it on (GHM keeps moving counts only with momentum).
STATEFUL: Dict[str, Tuple[Tuple[str, ...], dict]] = {
    'GHMC': (('acc_sum', ), dict(momentum=0.75)),
    'GHMR': (('acc_sum', ), dict(momentum=0.75)),
    'SeesawLoss': (('cum_samples', ), {}),
    'WiseIoULoss': (('running_mean', ), {}),
    'EQLV2Loss': (('pos_grad', 'neg_grad', 'pos_neg'), {}),
}

HALF = (torch.float16, torch.bfloat16)
#: Element-wise values past fp16's range on the float16_huge inputs.
SQUARES_THE_ERROR = {'MSELoss'}


# ---------------------------------------------------------------------------
# building calls
# ---------------------------------------------------------------------------
def _map_floats(args, fn):
    """``args`` with ``fn`` applied to every float tensor (nested tuples
    such as QFL's (labels, scores) included)."""
    return tuple(
        fn(a) if isinstance(a, torch.Tensor) and a.is_floating_point()
        else _map_floats(a, fn) if isinstance(a, tuple) else a
        for a in args)


def _target_floats(target, fn):
    if isinstance(target, tuple):
        return _map_floats(target, fn)
    if isinstance(target, torch.Tensor) and target.is_floating_point():
        return fn(target)
    return target


def takes_weight(name):
    return CASES[name].weight_shape is not None


def reduces(name):
    """Whether the loss takes ``reduction_override``/``avg_factor``."""
    return CASES[name].call is None


def reductions(name):
    return ('mean', 'sum', 'none') if reduces(name) else (None, )


def make_loss(name, **overrides):
    """The loss in float32 (buffers included), as built from a config."""
    return MODELS.build(dict(type=name, **dict(CASES[name].cfg,
                                               **overrides)))


def float32_inputs(name, n, seed=11):
    args, kwargs = CASES[name].make(seed, n)
    return _map_floats(args, lambda t: t.float()), kwargs


@dataclasses.dataclass
class Call:
    """One call of a loss; ``leaf`` is the prediction the gradient of a
    finite value must reach, ``check(out) -> problem or None`` an extra
    rule of the kind."""
    loss: torch.nn.Module
    args: tuple
    kwargs: dict
    check: Optional[Callable] = None
    what: str = ''
    autocast: bool = False

    @property
    def leaf(self):
        return self.args[0]


def _calls(name, args, kwargs, what='', check=None, autocast=False,
           loss=None, **call_kwargs):
    """A call per reduction of ``name`` on ``args`` (a fresh leaf each)."""
    out = []
    for reduction in reductions(name):
        leaf = args[0].detach().clone().requires_grad_()
        extra = dict(call_kwargs)
        if reduction is not None:
            extra['reduction_override'] = reduction
        out.append(Call(loss or make_loss(name), (leaf, ) + tuple(args[1:]),
                        dict(kwargs, **extra),
                        check=check and check(reduction),
                        what=f'{what} {reduction or ""}'.strip(),
                        autocast=autocast))
    return out


# ---------------------------------------------------------------------------
# classifying an outcome
# ---------------------------------------------------------------------------
def classify(name, call: Call) -> Tuple[str, str]:
    """``(outcome, detail)`` of one call (see the module docstring)."""
    context = (torch.autocast('cpu', dtype=torch.bfloat16)
               if call.autocast else contextlib.nullcontext())
    pristine = copy.deepcopy(call.loss)  # for a float64 re-run (state)
    try:
        with context:
            out = value(call.loss, call.args, **call.kwargs)
    except (ValueError, TypeError) as error:
        text = f'{type(error).__name__}: {error}'
        if name in str(error):
            return 'error', text
        return 'failure', f'an error that does not name {name}: {text}'
    except Exception as error:  # noqa: BLE001 -- classified, not hidden
        return 'failure', f'unexpected {type(error).__name__}: {error}'
    if not torch.isfinite(out).all():
        return 'nan', f'non-finite value {out.detach().flatten()[:4]}'
    if out.grad_fn is None:
        return 'failure', f'finite value {out} not connected to the graph'
    try:
        grad, = torch.autograd.grad(out.float().sum(), call.leaf,
                                    allow_unused=True)
    except Exception as error:  # noqa: BLE001
        return 'failure', f'backward raised {type(error).__name__}: {error}'
    if grad is None:
        return 'failure', 'no gradient reaches the prediction'
    if not torch.isfinite(grad).all():
        problem = _not_an_overflow(pristine, call, grad)
        if problem:
            return 'failure', problem
        return 'overflow', f'{grad.dtype} gradient past its range'
    if call.check is not None:
        problem = call.check(out)
        if problem:
            return 'failure', problem
    return 'finite', f'{out.dtype} {tuple(out.shape)}'


def _not_an_overflow(loss, call: Call, grad) -> Optional[str]:
    """Why the non-finite ``grad`` of ``call`` is not an overflow of its
    dtype (None if it is): the same call in float64 must give a finite
    gradient whose magnitude is past ``grad.dtype``'s range exactly where
    ``grad`` is not finite, and equal ``grad`` elsewhere."""
    shown = f'non-finite gradient {grad.flatten()[:4]}'
    if grad.dtype not in HALF:
        return shown
    args = _map_floats(call.args, lambda t: t.detach().double())
    leaf = args[0].requires_grad_()
    out = value(loss.double(), (leaf, ) + args[1:], **call.kwargs)
    exact, = torch.autograd.grad(out.sum(), leaf)
    beyond = exact.abs() > torch.finfo(grad.dtype).max
    if not torch.isfinite(exact).all():
        return f'{shown}; in float64 too'
    if not torch.equal(beyond, ~torch.isfinite(grad)):
        return (f'{shown}; float64 exceeds {grad.dtype} at '
                f'{int(beyond.sum())} elements, {grad.dtype} is not finite '
                f'at {int((~torch.isfinite(grad)).sum())}')
    inside = exact[~beyond].to(grad.dtype).double()
    if not torch.allclose(grad[~beyond].double(), inside, rtol=1e-2,
                          atol=1e-3):
        return f'{shown}; the finite elements differ from float64'
    return None


# ---------------------------------------------------------------------------
# the input kinds
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Kind:
    """An input kind: ``applies(name)``, ``calls(name, n) -> [Call]`` and
    the outcomes every call may have."""
    applies: Callable
    calls: Callable
    expect: Tuple[str, ...]


def _always(name):
    return True


def _box(name):
    return ROLES[name].pred == 'boxes'


def _geometric(name):
    return ROLES[name].pred == 'boxes' and ROLES[name].geometric


def _probabilities(name):
    return ROLES[name].pred == 'probabilities'


def _unbounded_pred(name):
    return ROLES[name].pred in ('boxes', 'logits', 'features')


def _with_weight(name):
    return takes_weight(name)


def _reducing_with_weight(name):
    return takes_weight(name) and reduces(name)


def empty(name, n):
    args, kwargs = float32_inputs(name, 0)
    return _calls(name, args, kwargs, 'n=0')


def single(name, n):
    args, kwargs = float32_inputs(name, 1)
    return _calls(name, args, kwargs, 'n=1')


def plain(name, n):
    args, kwargs = float32_inputs(name, n)
    return _calls(name, args, kwargs, f'n={n}')


def zero_weights(name, n):
    args, kwargs = float32_inputs(name, n)
    weight = torch.zeros(CASES[name].weight_shape(n))
    return (_calls(name, args, kwargs, 'weight=0', weight=weight) +
            _calls(name, args, kwargs, 'weight=0 avg_factor=0',
                   weight=weight, avg_factor=0.0)[:1])


def small_avg_factor(name, n):
    args, kwargs = float32_inputs(name, n)
    calls = []
    for avg_factor in (0, 0.0, 1e-30, torch.tensor(0.0),
                       torch.tensor(1e-30)):
        calls += _calls(name, args, kwargs, f'avg_factor={avg_factor}',
                        avg_factor=avg_factor)[:1]
    return calls


def _dtype_rule(name, dtype):
    """Half inputs: a reduced loss is float32, 'none' keeps the dtype."""

    def for_reduction(reduction):
        if reduction is None:  # the loss reduces itself
            allowed = (torch.float32, dtype)
        elif reduction == 'none':
            allowed = (dtype, )
        else:
            allowed = (torch.float32 if dtype in HALF else dtype, )

        def check(out):
            if out.dtype not in allowed:
                return (f'{dtype} input, reduction {reduction}: output '
                        f'{out.dtype}, expected one of {allowed}')
            return None

        return check

    return for_reduction


def precision(dtype, scale=1.0):
    """Inputs in ``dtype``; boxes six times larger (a few hundred pixels:
    fp16 areas pass 65504), times ``scale`` too, as are logits/features."""

    def calls(name, n):
        args, kwargs = CASES[name].make(11, n)
        if ROLES[name].pred == 'boxes':
            args = (args[0] * 6 * scale, args[1] * 6 * scale) + tuple(
                args[2:])
        elif scale != 1.0:
            args = (args[0] * scale, ) + tuple(args[1:])
        args = _map_floats(args, lambda t: t.to(dtype))
        loss = make_loss(name).to(
            torch.float64 if dtype == torch.float64 else torch.float32)
        calls = _calls(name, args, kwargs, f'{dtype} x{scale:g}',
                       loss=loss, check=_dtype_rule(name, dtype))
        if scale != 1.0 and name in SQUARES_THE_ERROR:
            # 'none' keeps fp16, and a squared error of 10^4 is past 65504
            calls = [c for c in calls
                     if c.kwargs.get('reduction_override') != 'none']
        return calls

    return calls


def scaled(factor):
    """Boxes (both of them) or logits/features times ``factor``."""

    def calls(name, n):
        args, kwargs = float32_inputs(name, n)
        if ROLES[name].target == 'boxes':
            args = (args[0] * factor, args[1] * factor) + tuple(args[2:])
        else:
            args = (args[0] * factor, ) + tuple(args[1:])
        return _calls(name, args, kwargs, f'x{factor:g}')

    return calls


def boxes_made(shape):
    """Box pairs of one hostile geometry."""

    def calls(name, n):
        args, kwargs = float32_inputs(name, n)
        pred, target = shape(args[0], args[1])
        return _calls(name, (pred, target) + tuple(args[2:]), kwargs,
                      shape.__name__)

    return calls


def identical(pred, target):
    return target.clone(), target


def zero_area(pred, target):
    # zero width, zero height, and a point, against a point target too
    flat = pred.clone()
    flat[0::3, 2] = flat[0::3, 0]
    flat[1::3, 3] = flat[1::3, 1]
    flat[2::3, 2:] = flat[2::3, :2]
    point = target.clone()
    point[::2, 2:] = point[::2, :2]
    return flat, point


def inverted(pred, target):
    return pred[:, [2, 3, 0, 1]].contiguous(), target


def far_apart(pred, target):
    return pred + 1e5, target


def zero_area_identical(pred, target):
    point = target.clone()
    point[:, 2:] = point[:, :2]
    return point.clone(), point


def probability_bounds(dtype):
    """Probabilities of exactly 0 and 1 (a clamp to [1e-4, 1 - 1e-4] gives
    1 in half precision), against every target."""

    def calls(name, n):
        args, kwargs = CASES[name].make(11, n)
        pred = (args[0] > 0.5).to(args[0].dtype)
        args = _map_floats((pred, ) + tuple(args[1:]),
                           lambda t: t.to(dtype))
        return _calls(name, args, kwargs, f'0 and 1 in {dtype}',
                      check=_dtype_rule(name, dtype))

    return calls


def non_contiguous(name, n):
    args, kwargs = float32_inputs(name, n)

    def strided(tensor):
        if tensor.dim() >= 2:
            return tensor.transpose(0, -1).contiguous().transpose(0, -1)
        return torch.stack([tensor] * 2, dim=1)[:, 0]

    args = tuple(strided(a) if isinstance(a, torch.Tensor) else a
                 for a in args)
    calls = _calls(name, args, kwargs, 'strided')
    for call in calls:
        leaf = strided(call.args[0].detach()).requires_grad_()
        call.args = (leaf, ) + call.args[1:]
    return calls


def autocast(name, n):
    args, kwargs = float32_inputs(name, n)
    return _calls(name, args, kwargs, 'autocast bf16', autocast=True)


def non_finite_pred(fill):

    def calls(name, n):
        args, kwargs = float32_inputs(name, n)
        pred = torch.full_like(args[0], fill)
        if ROLES[name].target == 'map':  # AE: both maps are predictions
            args = (args[0], torch.full_like(args[1], fill), args[2])
        return _calls(name, (pred, ) + tuple(args[1:]), kwargs, f'{fill}')

    return calls


def nan_in_one_row(name, n):
    args, kwargs = float32_inputs(name, n)
    pred = args[0].clone()
    pred[0] = float('nan')
    return _calls(name, (pred, ) + tuple(args[1:]), kwargs, 'row 0 NaN')


def _float_target(name):
    return ROLES[name].target in ('boxes', 'soft', 'label_score')


def nan_target(name, n):
    args, kwargs = float32_inputs(name, n)
    target = _target_floats(args[1],
                            lambda t: torch.full_like(t, float('nan')))
    return _calls(name, (args[0], target) + tuple(args[2:]), kwargs,
                  'NaN target')


def nan_weight(name, n):
    args, kwargs = float32_inputs(name, n)
    weight = torch.full(CASES[name].weight_shape(n), float('nan'))
    return _calls(name, args, kwargs, 'NaN weight', weight=weight)


def _first_rows(target, rows):
    if isinstance(target, tuple):
        return tuple(t[:rows] for t in target)
    return target[:rows]


def mismatched_rows(name, n):
    args, kwargs = float32_inputs(name, n)
    target = _first_rows(args[1], n - 1)
    return _calls(name, (args[0], target) + tuple(args[2:]), kwargs,
                  f'target of {n - 1} rows')


def three_coordinates(name, n):
    args, kwargs = float32_inputs(name, n)
    rest = tuple(a[:, :3] if a.dim() == 2 and a.shape[1] == 4 else a
                 for a in args[2:])
    return _calls(name, (args[0][:, :3], args[1][:, :3]) + rest, kwargs,
                  '3 coordinates')


def wrong_weight_shape(name, n):
    args, kwargs = float32_inputs(name, n)
    weight = torch.ones((n - 1, ) + tuple(CASES[name].weight_shape(n)[1:]))
    return _calls(name, args, kwargs, f'weight {tuple(weight.shape)}',
                  weight=weight)


def integer_pred(name, n):
    args, kwargs = CASES[name].make(11, n)
    pred = (args[0] * 10).long()
    calls = _calls(name, (pred.float(), ) + tuple(args[1:]), kwargs,
                   'int64 pred')
    for call in calls:  # an integer tensor cannot require grad
        call.args = (pred, ) + call.args[1:]
    return calls


def float_labels(name, n):
    args, kwargs = float32_inputs(name, n)
    target = args[1]
    if isinstance(target, tuple):
        target = (target[0].float(), ) + target[1:]
    else:
        target = target.float()
    return _calls(name, (args[0], target) + tuple(args[2:]), kwargs,
                  'float labels')


FINITE, NAN, ERROR = ('finite', ), ('nan', ), ('error', )
#: Half-precision probabilities at the bounds (see ``'overflow'`` above).
FINITE_OR_OVERFLOW = FINITE + ('overflow', )

KINDS: Dict[str, Kind] = {
    'empty': Kind(_always, empty, FINITE),
    'single': Kind(_always, single, FINITE),
    'plain': Kind(_always, plain, FINITE),
    'zero_weights': Kind(_reducing_with_weight, zero_weights, FINITE),
    'small_avg_factor': Kind(reduces, small_avg_factor, FINITE),
    'float16': Kind(_always, precision(torch.float16), FINITE_OR_OVERFLOW),
    'bfloat16': Kind(_always, precision(torch.bfloat16), FINITE),
    'float64': Kind(_always, precision(torch.float64), FINITE),
    # boxes up to ~10^4 px and logits of ~10^3, still within fp16's range
    'float16_huge': Kind(_unbounded_pred, precision(torch.float16, 8.0),
                         FINITE),
    'huge': Kind(_unbounded_pred, scaled(1e4), FINITE),
    'tiny': Kind(_unbounded_pred, scaled(1e-6), FINITE),
    'identical_boxes': Kind(_box, boxes_made(identical), FINITE),
    'zero_area_boxes': Kind(_box, boxes_made(zero_area), FINITE),
    'identical_points': Kind(_box, boxes_made(zero_area_identical),
                             FINITE),
    'inverted_boxes': Kind(_box, boxes_made(inverted), FINITE),
    'far_apart_boxes': Kind(_box, boxes_made(far_apart), FINITE),
    'probability_bounds': Kind(_probabilities,
                               probability_bounds(torch.float32), FINITE),
    'probability_bounds_fp16': Kind(_probabilities,
                                    probability_bounds(torch.float16),
                                    FINITE_OR_OVERFLOW),
    'non_contiguous': Kind(_always, non_contiguous, FINITE),
    'autocast': Kind(_always, autocast, FINITE),
    'nan_pred': Kind(_always, non_finite_pred(float('nan')), NAN),
    # +Inf is a valid limit for losses that squash the prediction (Dice's
    # sigmoid, L2Loss's clamp to [0, 1]): finite, or non-finite, but never
    # a finite value with a non-finite gradient
    'inf_pred': Kind(_unbounded_pred, non_finite_pred(float('inf')),
                     NAN + FINITE),
    'nan_row': Kind(_always, nan_in_one_row, NAN),
    # a loss that validates its target's range (DFL) may refuse NaN clearly
    'nan_target': Kind(_float_target, nan_target, NAN + ERROR),
    'nan_weight': Kind(_with_weight, nan_weight, NAN + ERROR),
    'mismatched_rows': Kind(_always, mismatched_rows, ERROR),
    'three_coordinates': Kind(_geometric, three_coordinates, ERROR),
    'wrong_weight_shape': Kind(_with_weight, wrong_weight_shape, ERROR),
    'integer_pred': Kind(_always, integer_pred, ERROR),
    'float_labels': Kind(
        lambda name: ROLES[name].target in ('labels', 'label_score'),
        float_labels, ERROR),
}

#: (loss, kind) pairs that fail today: reason (none; an entry here is a
#: strict xfail, so a fixed failure must leave the list).
KNOWN_FAILURES: Dict[Tuple[str, str], str] = {}
#: The same at the slow sizes.
SLOW_KNOWN_FAILURES: Dict[Tuple[str, str], str] = {}


def sweep(name, kind, n=ROWS) -> List[Tuple[str, str, str]]:
    """``(what, outcome, detail)`` of every call of ``kind`` on ``name``."""
    return [(call.what, *classify(name, call))
            for call in KINDS[kind].calls(name, n)]


def _pairs():
    for name in REGISTERED:
        if name not in ROLES:
            continue
        for kind, spec in KINDS.items():
            if spec.applies(name):
                marks = []
                if (name, kind) in KNOWN_FAILURES:
                    marks.append(pytest.mark.xfail(
                        strict=True, reason=KNOWN_FAILURES[(name, kind)]))
                yield pytest.param(name, kind, marks=marks,
                                   id=f'{name}-{kind}')


def _report(name, kind, results):
    expect = KINDS[kind].expect
    wrong = [r for r in results if r[1] not in expect]
    return '\n'.join([f'{name} / {kind}: expected one of {expect} from '
                      'every call; got'] +
                     [f'  {what}: {outcome}: {detail}'
                      for what, outcome, detail in wrong])


def test_every_registered_loss_is_in_the_sweep():
    missing = sorted(set(REGISTERED) - set(ROLES) - set(CASES))
    assert not missing, f'register a case and a role for {missing}'
    no_role = sorted(set(REGISTERED) - set(ROLES))
    assert not no_role, f'add {no_role} to ROLES in {__file__}'
    for name in REGISTERED:
        keys, overrides = STATEFUL.get(name, ((), {}))
        loss = make_loss(name, **overrides)
        state = {key for key, item in vars(loss).items()
                 if isinstance(item, torch.Tensor)}
        state |= {key for key, _ in loss.named_buffers()}
        state -= {'edges'}  # GHM's bin edges are constants
        assert state == set(keys), (
            f'{name} keeps state {sorted(state)}: list it in STATEFUL')


def test_every_kind_runs_on_some_loss():
    for kind, spec in KINDS.items():
        assert any(spec.applies(name) for name in ROLES), kind


@pytest.mark.parametrize('name,kind', list(_pairs()))
def test_hostile_input(name, kind):
    results = sweep(name, kind)
    assert results, (name, kind)
    assert all(r[1] in KINDS[kind].expect for r in results), _report(
        name, kind, results)


SLOW_KINDS = ('plain', 'float16', 'autocast', 'non_contiguous', 'nan_row',
              'zero_weights', 'far_apart_boxes')


def _slow_params():
    for name in REGISTERED:
        for kind in SLOW_KINDS:
            for rows in SLOW_ROWS:
                marks = [pytest.mark.slow]
                if (name, kind) in SLOW_KNOWN_FAILURES:
                    marks.append(pytest.mark.xfail(
                        strict=True, reason=SLOW_KNOWN_FAILURES[(name, kind)]))
                yield pytest.param(name, kind, rows, marks=marks,
                                   id=f'{name}-{kind}-{rows}')


@pytest.mark.parametrize('name,kind,rows', list(_slow_params()))
def test_hostile_input_at_fast_path_sizes(name, kind, rows):
    """The sizes where the dispatcher switches to the fast kernels."""
    if name not in ROLES or not KINDS[kind].applies(name):
        pytest.skip(f'{kind} does not apply to {name}')
    if rows > MAX_ROWS.get(name, rows):
        pytest.skip(f'{name} is quadratic in rows: {MAX_ROWS[name]} at most')
    results = sweep(name, kind, rows)
    assert all(r[1] in KINDS[kind].expect for r in results), _report(
        name, kind, results)


# ---------------------------------------------------------------------------
# stateful losses: a bad batch between good ones
# ---------------------------------------------------------------------------
def _state(loss, name):
    return {key: getattr(loss, key).detach().clone()
            for key in STATEFUL[name][0]}


def _bad_batches(name, n):
    """``(what, args, kwargs, expect)`` of the bad batches."""
    args, kwargs = float32_inputs(name, n, seed=5)
    nan_pred = torch.full_like(args[0], float('nan'))
    one_row = args[0].clone()
    one_row[0] = float('nan')
    inf_pred = torch.full_like(args[0], float('inf'))
    yield 'NaN pred', (nan_pred, ) + args[1:], kwargs, NAN
    yield 'NaN row', (one_row, ) + args[1:], kwargs, NAN
    yield 'Inf pred', (inf_pred, ) + args[1:], kwargs, NAN + FINITE
    if _float_target(name):
        target = _target_floats(args[1],
                                lambda t: torch.full_like(t, float('nan')))
        yield 'NaN target', (args[0], target) + args[2:], kwargs, NAN + ERROR
    yield ('mismatched rows', (args[0], _first_rows(args[1], n - 1)) +
           args[2:], kwargs, ERROR)


@pytest.mark.parametrize('name', sorted(STATEFUL))
@pytest.mark.parametrize(
    'rows', [ROWS, pytest.param(1024, marks=pytest.mark.slow)])
def test_stateful_loss_survives_a_bad_batch(name, rows):
    loss = make_loss(name, **STATEFUL[name][1])
    failures = []

    def run(what, args, kwargs, expect):
        leaf = args[0].detach().clone().requires_grad_()
        call = Call(loss, (leaf, ) + tuple(args[1:]), dict(kwargs), what=what)
        outcome, detail = classify(name, call)
        if outcome not in expect:
            failures.append((what, outcome, detail))
        for key, state in _state(loss, name).items():
            if state.is_floating_point() and not torch.isfinite(state).all():
                failures.append((what, 'failure',
                                 f'state {key} not finite: {state}'))

    good, kwargs = float32_inputs(name, rows, seed=1)
    run('good batch 1', good, kwargs, FINITE)
    for what, args, bad_kwargs, expect in _bad_batches(name, rows):
        run(what, args, bad_kwargs, expect)
    again, kwargs = float32_inputs(name, rows, seed=2)
    run('good batch 2', again, kwargs, FINITE)
    assert not failures, '\n'.join(
        [f'{name}: a bad batch between good ones'] +
        [f'  {what}: {outcome}: {detail}' for what, outcome, detail in
         failures])


# ---------------------------------------------------------------------------
# the classifier itself
# ---------------------------------------------------------------------------
class _Stub(torch.nn.Module):
    """A pretend loss, ``behaviour(pred) -> Tensor``."""

    def __init__(self, behaviour):
        super().__init__()
        self.behaviour = behaviour

    def forward(self, pred, target, **kwargs):
        return self.behaviour(pred)


def _raise(error):

    def behaviour(pred):
        raise error

    return behaviour


@pytest.mark.parametrize('behaviour,outcome', [
    (lambda p: p.sum(), 'finite'),
    (lambda p: p.sum() * float('nan'), 'nan'),
    (lambda p: p.detach().sum(), 'failure'),  # off the graph
    (lambda p: torch.zeros(()), 'failure'),  # off the graph
    # finite value, NaN gradient (sqrt(-1) in the branch not taken)
    (lambda p: torch.where(p > -5, p, p.sqrt()).sum(), 'failure'),
    (lambda p: p.sum().half(), 'failure'),  # dtype rule: float32
    (_raise(ValueError('Stub: pred has shape (2,)')), 'error'),
    (_raise(ValueError('pred has shape (2,)')), 'failure'),  # no name
    (_raise(RuntimeError('Stub: shapes')), 'failure'),  # not a clear type
    (_raise(IndexError('Stub: index 7')), 'failure'),
])
def test_the_classifier_tells_each_outcome(behaviour, outcome):
    pred = torch.tensor([-1.0, 2.0], requires_grad=True)
    check = _dtype_rule('Stub', torch.float32)('mean')
    call = Call(_Stub(behaviour), (pred, torch.zeros(2)), {}, check=check)
    assert classify('Stub', call)[0] == outcome


def test_the_mmdet_report_finds_where_mmdet_misses_a_promise(mmdet_losses):
    """tools/hostile_sweep.py on one twin: mmloss keeps every promise, and
    mmdet's NaN on empty boxes (README's table) shows as a difference."""
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).parents[1] / 'tools' / 'hostile_sweep.py'
    spec = importlib.util.spec_from_file_location('hostile_sweep', path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    table = tool.sweep(['GIoULoss'])
    assert {row[1] for row in table} == {
        kind for kind, spec in KINDS.items() if spec.applies('GIoULoss')}
    assert all(ours[0] in expect for *_, expect, ours, _ in table)
    empty_mean = [theirs for _, kind, what, _, _, theirs in table
                  if kind == 'empty' and what.endswith('mean')]
    assert empty_mean and empty_mean[0][0] != 'finite', empty_mean


class _HalfOnlyBlowUp(torch.nn.Module):
    """A loss whose gradient is huge only in half precision (a bug, not an
    overflow of a huge true gradient)."""

    def forward(self, pred, target):
        scale = 1e5 if pred.dtype in HALF else 1.0
        return (pred.float() ** 2).sum() * scale


class _HugeGradient(torch.nn.Module):
    """A loss whose true gradient is past fp16's range."""

    def forward(self, pred, target):
        return (pred.float() ** 2).sum() * 1e5


@pytest.mark.parametrize('loss,outcome', [(_HalfOnlyBlowUp(), 'failure'),
                                          (_HugeGradient(), 'overflow')])
def test_overflow_outcome_is_judged_against_float64(loss, outcome):
    pred = torch.tensor([0.9, 0.0001]).half().requires_grad_()
    call = Call(loss, (pred, torch.zeros(2)), {})
    assert classify('DemoLoss', call)[0] == outcome
