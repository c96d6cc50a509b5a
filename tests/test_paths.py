"""The differential harness: every fast path against the plain formula.

A fast path is a claim that it computes the plain formula's value and
gradients. This module holds every registered loss to that claim, in the
settings people train in:

* every path the dispatcher can take (:data:`mmloss.engine.dispatch.PATHS`):
  the fast kernels, their fused reductions, the CPU-only variants, the
  row-wise engine over several blocks, and the branches taken only off the
  CPU, forced on CPU tensors with :func:`~mmloss.engine.dispatch.
  pretend_device`;
* sizes straddling every threshold of the tuning table (a threshold ``t``
  in rows needs ``t - 1``, ``t`` and ``t + 1`` in :data:`SIZES`, or
  :func:`test_every_threshold_of_the_table_is_straddled` fails; one in
  elements is straddled by the row counts around it), the big ones behind
  the ``slow`` marker;
* float64, float32, float16 and bfloat16 inputs, ``torch.autocast`` on and
  off, every reduction, weights, ``avg_factor`` as a number and a tensor,
  targets that require a gradient, non-contiguous inputs, and
  ``create_graph=True`` with a Hessian-vector product.

The reference is always the same call with ``mmloss.fast_paths(False)``
(the plain autograd formula), in the same dtype, outside autocast and on
the real device.
"""
import contextlib
import dataclasses
from typing import Mapping, Optional

import pytest
import torch

import mmloss
from mmloss.engine import dispatch
from mmloss.registry import MODELS
from tests.cases import CASES, REGISTERED, value
from tests.test_gradients import custom_functions

#: Rows at which the harness runs every loss (the default suite) ...
FAST_SIZES = (1, 1023, 1024, 1025)
#: ... and the sizes behind the slow marker: block thresholds and one size
#: above 100k rows.
SLOW_SIZES = (2047, 2048, 2049, 4095, 4096, 4097, 16383, 16384, 16385,
              32767, 32768, 32769, 65535, 65536, 65537, 131071, 131072,
              131073)
SIZES = FAST_SIZES + SLOW_SIZES

#: The device kinds whose table entries the harness runs (CUDA's on CPU
#: tensors through pretend_device; on a real GPU as well where present).
DEVICE_KINDS = ('cpu', 'cuda')

#: How the harness reaches each path of dispatch.PATHS.
PATH_COVERAGE = {
    'plain': 'the reference of every comparison (fast_paths(False))',
    'fast': 'every comparison runs with fast_paths(True)',
    'fused': "reduction 'mean'/'sum' with no weight or an exact-shape "
             'float weight (SETTINGS)',
    'cpu': "DEVICE_KINDS 'cpu' (cpu_kernels=True in TUNING['cpu'])",
    'blocked': 'SLOW_SIZES above every block_rows of the table; the '
               'classification blocks: test_classification_blocks_equal_'
               'the_plain_formula',
    'compiled': 'test_compiled_kernels_equal_the_plain_formula (slow)',
}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One call's circumstances (see the module docstring)."""
    dtype: torch.dtype = torch.float64
    reduction: str = 'mean'
    weight: bool = False
    avg_factor: Optional[str] = None  # None, 'float' or 'tensor'
    autocast: bool = False
    create_graph: bool = False
    target_grad: bool = False
    strided: bool = False

    def __str__(self):
        parts = [str(self.dtype).replace('torch.', ''), self.reduction]
        for flag in ('weight', 'autocast', 'create_graph', 'target_grad',
                     'strided'):
            if getattr(self, flag):
                parts.append(flag)
        if self.avg_factor:
            parts.append(f'avg_{self.avg_factor}')
        return '-'.join(parts)


F64, F32 = torch.float64, torch.float32
#: Every axis value at least once, the common combinations more often.
SETTINGS = (
    Setting(F64, 'mean'),
    Setting(F64, 'none', weight=True),
    Setting(F64, 'sum', weight=True, target_grad=True),
    Setting(F32, 'mean', weight=True),
    Setting(F32, 'none'),
    Setting(F32, 'sum'),
    Setting(F32, 'mean', weight=True, avg_factor='float'),
    Setting(F32, 'mean', avg_factor='tensor'),
    Setting(F32, 'mean', weight=True, autocast=True),
    Setting(F32, 'none', autocast=True),
    Setting(F32, 'sum', strided=True),
    Setting(torch.float16, 'mean', weight=True),
    Setting(torch.bfloat16, 'none'),
    Setting(F64, 'mean', weight=True, create_graph=True),
    Setting(F64, 'none', create_graph=True, target_grad=True),
    Setting(F32, 'sum', create_graph=True, autocast=True),
)
#: The big sizes run fewer settings (each one covers the fused reduction,
#: the element-wise path, autocast and double backward).
SLOW_SETTINGS = (
    Setting(F32, 'mean', weight=True),
    Setting(F32, 'none', autocast=True),
    Setting(F64, 'sum', create_graph=True, target_grad=True),
)


#: Fields of the tuning table that are not thresholds in rows: the ones in
#: elements (:func:`_element_sizes`;
#: :func:`test_the_mean_equals_the_plain_mean_on_both_sides`), and the
#: classification kernels' block multiplier and the dots' block size (their
#: block boundaries: :func:`test_classification_blocks_equal_the_plain_
#: formula`, :func:`test_dot_blocks_equal_the_plain_formula`).
NOT_ROW_THRESHOLDS = ('min_elements', 'entries_per_block_row',
                      'loss_entries_per_block_row', 'dot_block_elements',
                      'mean_by_sum_elements')


def _table_thresholds():
    """Every size threshold in the tuning table counted in rows, with
    where it is (thresholds in elements: see :func:`_element_sizes`)."""
    found = {}
    for kind, entry in dispatch.TUNING.items():
        for spec in dataclasses.fields(entry):
            item = getattr(entry, spec.name)
            if isinstance(item, bool) or spec.name in NOT_ROW_THRESHOLDS:
                continue
            if isinstance(item, int):
                found[f'{kind}.{spec.name}'] = item
            elif isinstance(item, Mapping):
                for key, threshold in item.items():
                    found[f'{kind}.{spec.name}[{key}]'] = threshold
    return found


def _elements_per_row(name):
    args, _ = CASES[name].make(0, 1)
    return args[0].numel()


def _element_sizes():
    """``(name, rows)`` straddling every ``min_elements`` threshold: the
    last row count below it, the first at or above it, and one more."""
    sizes = set()
    for entry in dispatch.TUNING.values():
        for name, threshold in entry.min_elements.items():
            per_row = _elements_per_row(name)
            first = -(-threshold // per_row)
            sizes.update((name, rows) for rows in (first - 1, first,
                                                   first + 1) if rows > 0)
    return sorted(sizes)


def test_every_threshold_of_the_table_is_straddled():
    for where, threshold in _table_thresholds().items():
        missing = {threshold - 1, threshold, threshold + 1} - set(SIZES)
        missing.discard(0)
        assert not missing, (f'{where} = {threshold}: the harness does not '
                             f'run {sorted(missing)} rows; add them to '
                             f'FAST_SIZES or SLOW_SIZES')
    for entry in dispatch.TUNING.values():
        for name, threshold in entry.min_elements.items():
            rows = {r for n, r in _element_sizes() if n == name}
            per_row = _elements_per_row(name)
            assert any(r * per_row < threshold for r in rows) and any(
                r * per_row >= threshold for r in rows), (name, threshold)


def test_every_path_of_the_dispatcher_is_covered():
    assert set(PATH_COVERAGE) == set(dispatch.PATHS), (
        'a path of dispatch.PATHS without harness coverage (or coverage '
        'of a path that no longer exists)')


def test_every_device_kind_of_the_table_is_run():
    assert set(dispatch.TUNING) - {'default'} <= set(DEVICE_KINDS)


def test_the_issue_sizes_are_in_the_harness():
    assert {1, 1023, 1024, 32767, 32768, 65537} <= set(SIZES)
    assert max(SIZES) > 100_000


# ---------------------------------------------------------------------------
# running one call
# ---------------------------------------------------------------------------
def _cast(args, dtype):
    return tuple(
        a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point()
        else tuple(_cast(a, dtype)) if isinstance(a, tuple) else a
        for a in args)


def _strided(tensor):
    """The same values, stored non-contiguously."""
    if tensor.dim() >= 2:
        return tensor.transpose(0, -1).contiguous().transpose(0, -1)
    return torch.stack([tensor] * 2, dim=1)[:, 0]


def _inputs(name, n, setting, device):
    case = CASES[name]
    args, kwargs = case.make(11, n)
    args = _cast(args, setting.dtype)
    args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a
                 for a in args)
    if setting.strided:
        args = tuple(_strided(a) if isinstance(a, torch.Tensor) and
                     a.is_floating_point() else a for a in args)
    extra = {}
    if setting.weight and case.weight_shape is not None:
        gen = torch.Generator().manual_seed(5)
        weight = torch.rand(case.weight_shape(n), generator=gen,
                            dtype=torch.float64)
        # zero weights too, as negatives get in an anchor head
        weight = weight * (weight > 0.2)
        extra['weight'] = weight.to(setting.dtype).to(device)
    if setting.avg_factor == 'float':
        extra['avg_factor'] = 0.5 * n + 1.0
    elif setting.avg_factor == 'tensor':
        extra['avg_factor'] = torch.tensor(0.5 * n + 1.0, device=device)
    return args, dict(kwargs, **extra)


def _differentiable(name, args, setting):
    """The inputs that get a gradient: pred, and a float target when asked.
    """
    wanted = [args[0]]
    if setting.target_grad and isinstance(args[1], torch.Tensor) and \
            args[1].is_floating_point() and CASES[name].box:
        wanted.append(args[1])
    return wanted


def _leaves(args, count):
    return tuple(a.detach().clone().requires_grad_() if i < count else a
                 for i, a in enumerate(args))


def run_call(name, n, setting, *, fast, kind='cpu', device='cpu'):
    """Value, gradients (and with ``create_graph`` a Hessian-vector
    product) of one call; everything detached, in float64."""
    args, kwargs = _inputs(name, n, setting, device)
    count = len(_differentiable(name, args, setting))
    args = _leaves(args, count)
    wanted = list(args[:count])
    loss = MODELS.build(dict(type=name, **CASES[name].cfg)).to(device)
    if setting.dtype == torch.float64:
        loss = loss.double()  # the running state of GHM, Seesaw, Wise-IoU
    autocast = torch.autocast(device_type=torch.device(device).type,
                              dtype=torch.bfloat16) if setting.autocast \
        else contextlib.nullcontext()
    pretend = dispatch.pretend_device(kind) if kind != device else \
        contextlib.nullcontext()
    with mmloss.fast_paths(fast), pretend, autocast:
        out = value(loss, args, reduction_override=setting.reduction,
                    **kwargs)
        if not fast:
            assert not custom_functions(out), (
                f'{name}: fast_paths(False) still ran {custom_functions(out)}')
        gen = torch.Generator().manual_seed(3)
        upstream = (torch.rand(out.shape, generator=gen,
                               dtype=torch.float64) + 0.5).to(out)
        grads = torch.autograd.grad(out, wanted, upstream,
                                    create_graph=setting.create_graph,
                                    allow_unused=True)
        grads = [torch.zeros_like(w) if g is None else g
                 for g, w in zip(grads, wanted)]
        results = [out] + list(grads)
        if setting.create_graph:
            direction = [torch.rand(w.shape, generator=gen,
                                    dtype=torch.float64).to(w)
                         for w in wanted]
            pairs = [(g, d) for g, d in zip(grads, direction)
                     if g.requires_grad]
            if pairs:
                product = sum((g * d).sum() for g, d in pairs)
                hvp = torch.autograd.grad(product, wanted, allow_unused=True)
                results += [torch.zeros_like(w) if h is None else h
                            for h, w in zip(hvp, wanted)]
            else:
                results.append(None)  # the plain side decides below
    return [None if r is None else r.detach().double().cpu()
            for r in results]


def _tolerance(setting):
    if setting.dtype in (torch.float16, torch.bfloat16):
        return 2e-2, 2e-2
    if setting.dtype == torch.float32:
        return 1e-4, 1e-5
    return 1e-7, 1e-10


def assert_same(candidate, reference, setting, what):
    rtol, atol_scale = _tolerance(setting)
    assert len(candidate) == len(reference), (
        f'{what}: {len(candidate)} results vs {len(reference)} (a '
        f'create_graph gradient without a graph?)')
    labels = ['value'] + [f'result {i}' for i in range(1, len(reference))]
    for label, got, want in zip(labels, candidate, reference):
        if want is None:
            assert got is None, f'{what}: {label}'
            continue
        assert got is not None, f'{what}: {label} missing'
        scale = want.abs().max().item() if want.numel() else 0.0
        torch.testing.assert_close(
            got, want, rtol=rtol, atol=atol_scale * max(scale, 1e-12),
            equal_nan=False, msg=lambda m: f'{what}: {label}: {m}')


def _reference(name, n, setting):
    """The plain formula, real device, no autocast (float32 inputs where
    the candidate runs under autocast)."""
    plain_setting = dataclasses.replace(setting, autocast=False)
    return run_call(name, n, plain_setting, fast=False)


def _applicable(name, setting):
    case = CASES[name]
    if setting.weight and case.weight_shape is None:
        return False
    if setting.reduction == 'sum' and not case.sum_is_sum_of_none and \
            setting.avg_factor:
        return False
    return True


def _check(name, n, setting, kind):
    if not _applicable(name, setting):
        pytest.skip(f'{name} takes no {setting}')
    reference = _reference(name, n, setting)
    candidate = run_call(name, n, setting, fast=True, kind=kind)
    assert_same(candidate, reference, setting,
                f'{name} n={n} {setting} on {kind}')


@pytest.mark.parametrize('kind', DEVICE_KINDS)
@pytest.mark.parametrize('setting', SETTINGS, ids=str)
@pytest.mark.parametrize('n', FAST_SIZES)
@pytest.mark.parametrize('name', REGISTERED)
def test_fast_paths_equal_the_plain_formula(name, n, setting, kind):
    _check(name, n, setting, kind)


@pytest.mark.parametrize('kind', DEVICE_KINDS)
@pytest.mark.parametrize('setting', SETTINGS, ids=str)
@pytest.mark.parametrize('name,n', _element_sizes())
def test_fast_paths_equal_the_plain_formula_at_element_thresholds(
        name, n, setting, kind):
    _check(name, n, setting, kind)


def _slow_names(n):
    """At the big sizes: every loss once above 100k rows, the box losses
    (the row-wise engine's blocks) and the losses with a size threshold in
    the table at every size."""
    thresholds = {key for entry in dispatch.TUNING.values()
                  for key in entry.min_rows}
    names = [name for name in REGISTERED
             if CASES[name].box or name in thresholds]
    if n == max(SLOW_SIZES):
        names = list(REGISTERED)
    return [name for name in names
            if CASES[name].max_rows is None or n <= CASES[name].max_rows]


@pytest.mark.slow
@pytest.mark.parametrize('kind', DEVICE_KINDS)
@pytest.mark.parametrize('setting', SLOW_SETTINGS, ids=str)
@pytest.mark.parametrize('name,n', [(name, n) for n in SLOW_SIZES
                                    for name in _slow_names(n)])
def test_fast_paths_equal_the_plain_formula_at_large_sizes(name, n, setting,
                                                           kind):
    if setting.create_graph and _elements_per_row(name) > 16 and \
            name not in _size_dependent():
        # a float64 Hessian of 10M+ elements (heatmaps, masks) for a loss
        # without a size threshold: its paths are the small sizes' paths
        pytest.skip(f'{name}: no size-dependent path; double backward is '
                    f'checked at FAST_SIZES')
    _check(name, n, setting, kind)


def _size_dependent():
    return {key for entry in dispatch.TUNING.values()
            for table in (entry.min_rows, entry.min_elements)
            for key in table}


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
@pytest.mark.parametrize('setting', SETTINGS, ids=str)
@pytest.mark.parametrize('n', FAST_SIZES + (131073, ))
@pytest.mark.parametrize('name', REGISTERED)
def test_fast_paths_equal_the_plain_formula_on_cuda(name, n, setting):
    if not _applicable(name, setting):
        pytest.skip(f'{name} takes no {setting}')
    reference = _reference(name, n, setting)
    candidate = run_call(name, n, setting, fast=True, kind='cuda',
                         device='cuda')
    assert_same(candidate, reference, setting, f'{name} n={n} {setting}')


@pytest.mark.slow
@pytest.mark.parametrize('setting', SETTINGS[:6], ids=str)
def test_compiled_kernels_equal_the_plain_formula(setting, monkeypatch):
    """``MMLOSS_COMPILE=1`` (compiles for tens of seconds: slow)."""
    monkeypatch.setenv(dispatch.COMPILE_ENV, '1')
    for name in ('FocalLoss', 'Poly1FocalLoss'):
        for n in (1023, 4097):
            _check(name, n, setting, 'cpu')


# ---------------------------------------------------------------------------
# the classification kernels' row blocks
# ---------------------------------------------------------------------------
BLOCK_MODULES = ('mmloss.losses.focal_kernels', 'mmloss.losses.dice',
                 'mmloss.losses.kd', 'mmloss.losses.cross_entropy_kernels')
#: The big sizes' settings and non-contiguous inputs, element-wise.
BLOCK_SETTINGS = SLOW_SETTINGS + (Setting(F32, 'none', strided=True), )
#: Rows of one classification block in this test (its boundary: 1024).
BLOCK_BOUNDARY = 1024
PROBE_ROWS = 8


def _spy_row_blocks(monkeypatch):
    """Record ``(entries, blocks)`` of every ``row_blocks`` call."""
    import importlib
    calls = []
    original = importlib.import_module(BLOCK_MODULES[0]).row_blocks

    def spy(work, loss_name=None):
        spans = original(work, loss_name)
        calls.append((work.numel(), len(spans)))
        return spans

    for module in BLOCK_MODULES:
        monkeypatch.setattr(importlib.import_module(module), 'row_blocks',
                            spy)
    return calls


def _probe_losses(monkeypatch, calls, **lifted):
    """``{name: the first recorded call's elements per row}`` of the
    registered losses whose fast path records a call in ``calls`` (a spy's
    list of ``(elements, count)``), found by running each once on
    :data:`PROBE_ROWS` rows with every size threshold of the table lifted
    (and the other table fields in ``lifted`` replaced)."""
    found = {}
    for kind, entry in list(dispatch.TUNING.items()):
        monkeypatch.setitem(dispatch.TUNING, kind, dataclasses.replace(
            entry, min_rows={}, min_elements={}, **lifted))
    for name in REGISTERED:
        calls.clear()
        args, kwargs = _inputs(name, PROBE_ROWS, Setting(F32, 'mean'),
                               'cpu')
        loss = MODELS.build(dict(type=name, **CASES[name].cfg))
        pred = args[0].detach().requires_grad_()
        with mmloss.fast_paths(True):
            value(loss, (pred, ) + args[1:], **kwargs)
        if calls:
            found[name] = calls[0][0] // PROBE_ROWS
    return found


def _across_the_boundary(name, per_row, settings, kind, calls):
    """Check ``name`` against the plain formula on ``kind`` at
    :data:`BLOCK_BOUNDARY` - 1, + 0 and + 1 rows in each of ``settings``
    it takes; yield ``(rows, setting, counts)``, ``counts`` the set of the
    counts the spy recorded in ``calls`` (``(elements, count)``) for
    those rows' elements."""
    for n in (BLOCK_BOUNDARY - 1, BLOCK_BOUNDARY, BLOCK_BOUNDARY + 1):
        for setting in settings:
            if not _applicable(name, setting):
                continue
            calls.clear()
            _check(name, n, setting, kind)
            yield n, setting, {count for elements, count in calls
                               if elements == n * per_row}


def _blocked_losses(monkeypatch):
    """``{name: entries per row}`` of the registered losses whose fast
    path runs through the classification row blocks, and the spy's calls.
    """
    calls = _spy_row_blocks(monkeypatch)
    return _probe_losses(monkeypatch, calls), calls


@pytest.mark.parametrize('kind', DEVICE_KINDS)
def test_classification_blocks_equal_the_plain_formula(kind, monkeypatch):
    """Each device kind's ``entries_per_block_row``: with its table entry's
    ``block_rows`` scaled so that a block holds the entries of
    :data:`BLOCK_BOUNDARY` of the loss's rows (the multiplier as the table
    has it), every loss of the classification kernels equals the plain
    formula in one block and on both sides of the boundary (two blocks).
    A loss with its own multiplier (``loss_entries_per_block_row``) is
    run at its own boundary."""
    found, calls = _blocked_losses(monkeypatch)
    assert {'FocalLoss', 'CrossEntropyLoss', 'GaussianFocalLoss',
            'KnowledgeDistillationKLDivLoss', 'DiceLoss'} <= set(found), found
    # an override for a loss that does not run in these blocks is dead
    assert set(dispatch.TUNING[kind].loss_entries_per_block_row) <= set(
        found), found
    for name, per_row in sorted(found.items()):
        entry = dispatch.TUNING[kind]
        factor = entry.loss_entries_per_block_row.get(
            name, entry.entries_per_block_row)
        monkeypatch.setitem(dispatch.TUNING, kind, dataclasses.replace(
            entry, block_rows=BLOCK_BOUNDARY * per_row // factor))
        for n, setting, counts in _across_the_boundary(
                name, per_row, BLOCK_SETTINGS, kind, calls):
            assert counts == {1 if n <= BLOCK_BOUNDARY else 2}, (
                name, n, setting, calls)


def _spy_dots(monkeypatch):
    """Record ``(elements, dots)`` of every
    :func:`~mmloss.engine.dispatch.sum_of_products` call (dots: how many
    ``torch.dot`` calls it made; 0 for its ``(x * y).sum()`` branch)."""
    calls, dots = [], []
    original_sum, original_dot = dispatch.sum_of_products, torch.dot

    def counting_dot(*args, **kwargs):
        dots.append(1)
        return original_dot(*args, **kwargs)

    def spy(x, y):
        dots.clear()
        out = original_sum(x, y)
        calls.append((x.numel(), len(dots)))
        return out

    monkeypatch.setattr(torch, 'dot', counting_dot)
    monkeypatch.setattr(dispatch, 'sum_of_products', spy)
    return calls


@pytest.mark.parametrize('kind', DEVICE_KINDS)
def test_dot_blocks_equal_the_plain_formula(kind, monkeypatch):
    """Each device kind's ``dot_block_elements``: where positive, scaled so
    that a block holds :data:`BLOCK_BOUNDARY` of the loss's rows, every
    loss summing products by dots equals the plain formula in one dot and
    on both sides of the boundary (two dots); where 0, the product is
    summed without dots."""
    calls = _spy_dots(monkeypatch)
    # unweighted calls that the table sends to torch's own loss included
    found = _probe_losses(monkeypatch, calls, plain_unweighted=frozenset())
    assert 'MSELoss' in found, found
    block = dispatch.TUNING[kind].dot_block_elements
    for name, per_row in sorted(found.items()):
        if block > 0:
            monkeypatch.setitem(dispatch.TUNING, kind, dataclasses.replace(
                dispatch.TUNING[kind],
                dot_block_elements=BLOCK_BOUNDARY * per_row))
        for n, setting, dots in _across_the_boundary(
                name, per_row, BLOCK_SETTINGS + (Setting(F32, 'mean'), ),
                kind, calls):
            if block <= 0:
                assert dots <= {0}, (name, n, setting, calls)
            elif setting.dtype in (F32, F64) and \
                    setting.reduction != 'none' and \
                    not setting.weight and not setting.strided:
                assert dots == {1 if n <= BLOCK_BOUNDARY else 2}, (
                    name, n, setting, calls)


@pytest.mark.parametrize('autocast', (False, True), ids=('eager', 'autocast'))
@pytest.mark.parametrize('dtype', (F64, F32, torch.float16, torch.bfloat16),
                         ids=str)
@pytest.mark.parametrize('kind', DEVICE_KINDS)
def test_the_mean_equals_the_plain_mean_on_both_sides(kind, dtype, autocast):
    """Each device kind's ``mean_by_sum_elements``: on both sides of it
    (and at 1 and 1000 losses) a ``'mean'`` takes the branch the table
    says (``loss.mean()`` below it and in half precision, ``sum() / count``
    from it) and equals the float64 mean in value, gradient and
    Hessian-vector product (``create_graph=True``)."""
    from mmloss.reduction import Reduction
    threshold = dispatch.TUNING[kind].mean_by_sum_elements
    counts = {1, 1000} | {c for c in (threshold - 1, threshold,
                                      threshold + 1) if c > 0}
    rtol = 1e-7 if dtype == F64 else 1e-5 if dtype == F32 else 1e-2
    for count in sorted(counts):
        gen = torch.Generator().manual_seed(count)
        base = torch.rand(count, generator=gen, dtype=F64) + 0.5
        x = base.to(dtype).requires_grad_()
        direction = torch.rand(count, generator=gen, dtype=F64)
        context = torch.autocast('cpu', dtype=torch.bfloat16) if autocast \
            else contextlib.nullcontext()
        with dispatch.pretend_device(kind), context:
            out = Reduction('t', None, 'mean').apply(x * x)
            (grad, ) = torch.autograd.grad(out, x, create_graph=True)
            (hvp, ) = torch.autograd.grad((grad * direction.to(dtype)).sum(),
                                          x)
        by_sum = threshold <= count and dtype in (F32, F64)
        assert type(out.grad_fn).__name__ == (
            'DivBackward0' if by_sum else 'MeanBackward0'), (kind, count)
        exact = x.detach().double()
        want = [(exact * exact).mean(), 2 * exact / count,
                2 * direction.to(dtype).double() / count]
        for got, ref in zip((out, grad, hvp), want):
            # (half gradients of 1/count hold subnormals)
            atol = 0 if dtype in (F32, F64) else rtol * ref.abs().max()
            torch.testing.assert_close(got.detach().double(), ref,
                                       rtol=rtol, atol=atol)


def test_the_switch_forces_the_plain_formula_and_restores(monkeypatch):
    assert mmloss.fast_paths_enabled()
    with mmloss.fast_paths(False):
        assert not mmloss.fast_paths_enabled()
        with mmloss.fast_paths(True):
            assert mmloss.fast_paths_enabled()
        assert not mmloss.fast_paths_enabled()
    assert mmloss.fast_paths_enabled()
    monkeypatch.setenv(dispatch.FAST_PATHS_ENV, '0')
    assert not mmloss.fast_paths_enabled()
    with mmloss.fast_paths(True):
        assert mmloss.fast_paths_enabled()
    assert not mmloss.fast_paths_enabled()
