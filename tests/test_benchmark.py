"""Tests of ``tools/benchmark.py``: its case table, measurements and reports.

The tool is loaded from its file (``tools/`` is not a package). Nothing here
asserts a timing: speed claims come from running the tool itself. Every run
uses the small size, one repetition and no warm-up.
"""
import importlib.util
import json
import math
import pathlib
import statistics
import sys

import pytest
import torch

TOOL = pathlib.Path(__file__).resolve().parents[1] / 'tools' / 'benchmark.py'


def _load_tool():
    spec = importlib.util.spec_from_file_location('mmloss_benchmark', TOOL)
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the file runs.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load_tool()
FIRST_TO_LAND = ('FocalLoss', 'GIoULoss', 'GHMC')


@pytest.fixture(autouse=True)
def one_thread():
    """``main`` sets the thread count; hand the suite its one thread back."""
    yield
    torch.set_num_threads(1)


@pytest.fixture
def mmdet_as_mmloss(monkeypatch, mmdet_losses):
    """Stand mmdet's own module in for mmloss's, so the tool's machinery is
    tested whatever mmloss has landed so far (mmdet vs mmdet must agree)."""
    monkeypatch.setattr(bench, 'has_mmloss', lambda case: True)
    monkeypatch.setattr(bench, 'build_mmloss', bench.build_mmdet)


def _case(key):
    return next(c for c in bench.CASES if c.key == key)


def _present(names):
    return [n for n in names if bench.has_mmloss(_case(n))]


# ----------------------------------------------------------------- cases


def test_case_table_covers_issue_losses():
    keys = {c.key for c in bench.CASES}
    twins = {'FocalLoss', 'GHMC', 'GHMR', 'CrossEntropyLoss',
             'CrossEntropyLoss(sigmoid)', 'CrossEntropyCustomLoss',
             'VarifocalLoss', 'QualityFocalLoss',
             'DistributionFocalLoss', 'GaussianFocalLoss', 'SeesawLoss',
             'KnowledgeDistillationKLDivLoss', 'DiceLoss', 'L1Loss',
             'SmoothL1Loss', 'BalancedL1Loss', 'MSELoss', 'IoULoss',
             'GIoULoss', 'DIoULoss', 'CIoULoss', 'EIoULoss', 'SIoULoss',
             'BoundedIoULoss'}
    only_ours = {'AlphaIoULoss', 'WiseIoULoss', 'MPDIoULoss', 'NWDLoss',
                 'Poly1FocalLoss', 'FocalEIoULoss', 'VariantIoULoss'}
    assert keys == twins | only_ours
    assert {c.key for c in bench.CASES if not c.in_mmdet} == only_ours
    assert len(keys) == len(bench.CASES)


def test_large_sizes_are_the_issue_sizes():
    gen = torch.Generator().manual_seed(0)
    (pred, labels), shape = _case('FocalLoss').make_inputs('large', gen)
    assert pred.shape == (100_000, 80) and labels.shape == (100_000, )
    assert shape == '100000x80'
    (pred, target), _ = _case('GIoULoss').make_inputs('large', gen)
    assert pred.shape == target.shape == (200_000, 4)
    # Valid, non-degenerate boxes: x2 > x1 and y2 > y1.
    assert bool((pred[:, 2:] > pred[:, :2]).all())
    assert bool((target[:, 2:] > target[:, :2]).all())


@pytest.mark.parametrize('case', [c for c in bench.CASES if c.in_mmdet],
                         ids=lambda c: c.key)
def test_every_twin_runs_in_mmdet_from_the_same_config(case, mmdet_losses):
    """The case table's config and inputs are what mmdet's loss accepts."""
    args, _ = case.make_inputs('small', torch.Generator().manual_seed(0))
    loss = bench.build_mmdet(case, torch.device('cpu'))
    assert type(loss).__name__ == case.loss_type
    value, grad = bench.forward_backward(loss, args)
    assert value.dim() == 0 and bool(torch.isfinite(value))
    assert grad.shape == args[0].shape and bool(torch.isfinite(grad).all())
    assert float(grad.abs().sum()) > 0


def test_select_cases_by_class_or_row_name():
    both = bench.select_cases(['CrossEntropyLoss'])
    assert [c.key for c in both] == ['CrossEntropyLoss',
                                     'CrossEntropyLoss(sigmoid)']
    one = bench.select_cases(['CrossEntropyLoss(sigmoid)', 'ghmc'])
    assert [c.key for c in one] == ['CrossEntropyLoss(sigmoid)', 'GHMC']
    assert len(bench.select_cases(None)) == len(bench.CASES)


def test_unknown_loss_name_lists_known_ones():
    with pytest.raises(ValueError, match='NoSuchLoss') as info:
        bench.select_cases(['FocalLoss', 'NoSuchLoss'])
    assert 'known:' in str(info.value) and 'GIoULoss' in str(info.value)


def test_cli_unknown_loss_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        bench.main(['--losses', 'NoSuchLoss'])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert 'unknown loss name(s): NoSuchLoss' in err and 'FocalLoss' in err


# ----------------------------------------------------------- measurement


class _StashingProduct(torch.autograd.Function):
    """Saves ``x`` through ``save_for_backward`` and ``2y`` as a ctx field."""

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x)
        ctx.twice_y = y * 2
        return (x * y).sum()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.twice_y / 2, None


def _saved_bytes(fn, x, what='storage_bytes'):
    meter = bench.SavedTensorMeter()
    with meter.hooks():
        value = fn(x)
    return getattr(meter.finish(value), what)


def test_saved_bytes_counts_distinct_storages():
    x = torch.randn(1000, requires_grad=True)  # 4000 bytes
    # mul saves both operands: x and a new 1000-element tensor.
    assert _saved_bytes(lambda t: (t * t[:500].repeat(2)).sum(), x) == 8000
    # Two saved views of one storage: it counts once, and whole ...
    assert _saved_bytes(lambda t: (t[:250] * t[:250]).sum(), x) == 4000
    # ... while the per-tensor count adds the two 1000-byte views.
    assert _saved_bytes(lambda t: (t[:250] * t[:250]).sum(), x,
                        'tensor_bytes') == 2000
    # exp saves its result, a new storage; x itself is not saved.
    assert _saved_bytes(lambda t: t.exp().sum(), x) == 4000
    # Nothing saved for a plain sum.
    assert _saved_bytes(lambda t: t.sum(), x) == 0


def test_saved_bytes_sees_custom_function_ctx():
    x = torch.randn(1000, dtype=torch.float64, requires_grad=True)
    y = torch.randn(1000, dtype=torch.float64)
    # x via save_for_backward (hooks) + 2y as a ctx attribute (graph walk).
    assert _saved_bytes(lambda t: _StashingProduct.apply(t, y), x) == 16000


def test_measure_memory_reports_saved_and_peak():
    class Square(torch.nn.Module):
        def forward(self, pred, target):
            return ((pred - target) ** 2).mean()

    pred, target = torch.randn(250_000), torch.randn(250_000)  # 1 MB each
    memory = bench.measure_memory(Square(), (pred, target),
                                  torch.device('cpu'))
    # pow saves the difference (1 MB); nothing else is kept.
    assert memory['saved_bytes'] == memory['saved_tensor_bytes'] == 1_000_000
    if memory['peak_method'] == 'profiler':
        # At least the difference and the gradient; at most those plus the
        # square and a few backward temporaries of the same size.
        assert 2_000_000 <= memory['peak_bytes'] <= 6_100_000


def test_compare_flags_mismatch_and_non_finite():
    ref = torch.tensor([1.0, -2.0, 3e-9, float('nan')])
    assert bench.compare(ref.clone(), ref)[0] is True
    ok, err, note = bench.compare(ref * (1 + 1e-6), ref)
    assert ok and err < 1e-4 and 'non-finite' in note
    ok, err, _ = bench.compare(ref * (1 + 1e-3), ref)
    assert not ok and err > 1e-4
    bad = ref.clone()
    bad[0] = float('inf')
    assert bench.compare(bad, ref)[0] is False
    assert bench.compare(torch.ones(3), torch.ones(4))[0] is False


def test_target_verdicts():
    mib = 2 ** 20

    def row(loss, speedup, saved, peak=1.0, size='large'):
        ref = dict(saved_bytes=100 * mib, peak_bytes=100 * mib)
        ours = dict(saved_bytes=int(saved * 100 * mib),
                    peak_bytes=int(peak * 100 * mib))
        return dict(loss_type=loss, size=size, speedup=speedup,
                    saved_ratio=saved, peak_ratio=peak, mmloss=ours,
                    mmdet=ref)

    assert bench.target_verdict(row('FocalLoss', 3.1, 0.2)) == 'met'
    assert 'saved' in bench.target_verdict(row('FocalLoss', 3.1, 0.3))
    assert 'speed' in bench.target_verdict(row('GHMC', 7.0, 0.5))
    assert bench.target_verdict(row('GIoULoss', 1.6, 1.0)) == 'met'
    assert 'peak' in bench.target_verdict(row('GIoULoss', 1.6, 1.0, 1.2))
    assert 'saved' in bench.target_verdict(row('SIoULoss', 1.6, 1.02))
    # Within 1% more is noise (a byte per row, a few scalars).
    assert bench.target_verdict(row('GIoULoss', 1.6, 1.005, 1.005)) == 'met'
    # ~1k rows: never slower than mmdet (a few percent of timing noise)
    assert bench.target_verdict(row('GIoULoss', 1.0, 1.0, size='small')) \
        == 'met'
    assert bench.target_verdict(row('L1Loss', 0.97, 1.0, size='small')) \
        == 'met'
    assert 'speed' in bench.target_verdict(row('L1Loss', 0.88, 1.0,
                                               size='small'))
    # --rows sizes have no target
    assert bench.target_verdict(row('GIoULoss', 0.5, 1.0, size=4096)) is None


def test_rows_axis_sets_the_row_count_of_every_input_kind():
    gen = torch.Generator().manual_seed(0)
    for case in bench.CASES:
        args, shape = case.make_inputs(777, gen)
        rows = args[0].shape[2] if case.loss_type == 'GaussianFocalLoss' \
            else args[0].shape[0]
        assert rows == 777, (case.key, shape)
    parsed = bench.parse_args(['--size', 'small', '--rows', '512', '4096'])
    assert parsed.sizes == ('small', 512, 4096)
    with pytest.raises(SystemExit):
        bench.parse_args(['--rows', '0'])


def test_more_memory_slack():
    assert not bench.more_memory(1000 + 60_000, 1000)  # under 64 KiB
    assert bench.more_memory(1000 + 70_000, 1000)
    assert not bench.more_memory(101 * 2 ** 20 - 1, 100 * 2 ** 20)
    assert bench.more_memory(102 * 2 ** 20, 100 * 2 ** 20)
    assert not bench.more_memory(None, 10)


# ------------------------------------------------------------ whole runs


def test_run_case_machinery_on_stateful_loss(mmdet_as_mmloss):
    """GHM-C keeps momentum state: fresh modules for the check agree."""
    row = bench.run_case(_case('GHMC'), 'small', torch.device('cpu'),
                         repeat=2, warmup=1, use_mmdet=True)
    assert row['agree'] is True and row['agreement']['value_rel_err'] == 0
    for side in (row['mmloss'], row['mmdet']):
        assert side['status'] == 'ok' and len(side['runs_ms']) == 2
        assert side['saved_bytes'] > 0 and side['peak_bytes'] > 0
    assert row['speedup'] > 0 and row['saved_ratio'] == 1.0
    assert not bench.row_failed(row)


def test_mismatch_exits_1(monkeypatch, mmdet_losses, tmp_path, capsys):
    """A twin whose result differs from mmdet's fails the run."""
    def wrong_gamma(case, device):
        return bench.build_mmdet(
            bench.Case(case.key, case.loss_type, dict(case.cfg, gamma=1.0),
                       case.make_inputs), device)

    monkeypatch.setattr(bench, 'has_mmloss', lambda case: True)
    monkeypatch.setattr(bench, 'build_mmloss', wrong_gamma)
    status = bench.main(['--losses', 'FocalLoss', '--size', 'small',
                         '--repeat', '1', '--warmup', '0', '--threads', '1',
                         '--out', str(tmp_path), '--no-progress'])
    assert status == 1
    captured = capsys.readouterr()
    assert 'MISMATCH' in captured.out and 'FAILED FocalLoss' in captured.err
    rows = json.loads((tmp_path / 'benchmark.json').read_text())['rows']
    assert rows[0]['agree'] is False


def test_missing_loss_is_reported_not_failed(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, 'has_mmloss', lambda case: False)
    status = bench.main(['--losses', 'DIoULoss', '--size', 'small',
                         '--repeat', '1', '--warmup', '0', '--threads', '1',
                         '--out', str(tmp_path), '--no-progress'])
    assert status == 0
    row = json.loads((tmp_path / 'benchmark.json').read_text())['rows'][0]
    assert row['mmloss']['status'] == 'missing' and row['agree'] is None
    assert '| DIoULoss | small |' in (tmp_path / 'benchmark.md').read_text()


def test_cli_on_landed_losses_writes_json_and_markdown(tmp_path, capsys):
    """The real thing: mmloss's landed twins against mmdet, small size."""
    names = _present(FIRST_TO_LAND)
    if not names:
        pytest.skip('none of FocalLoss, GIoULoss, GHMC has landed in mmloss')
    status = bench.main(['--losses', *names, '--size', 'small', '--repeat',
                         '1', '--warmup', '0', '--threads', '1', '--out',
                         str(tmp_path), '--no-progress'])
    assert status == 0
    report = json.loads((tmp_path / 'benchmark.json').read_text())
    assert report['meta']['threads'] == 1 and report['meta']['repeat'] == 1
    rows = {r['loss']: r for r in report['rows']}
    assert sorted(rows) == sorted(names)
    mmdet_here = report['meta']['mmdet'] is not None
    for row in rows.values():
        assert row['size'] == 'small' and row['mmloss']['status'] == 'ok'
        assert row['mmloss']['ms'] > 0 and row['mmloss']['saved_bytes'] > 0
        if mmdet_here:
            assert row['agree'] is True, row['agreement']
            assert math.isfinite(row['speedup'])
    markdown = (tmp_path / 'benchmark.md').read_text()
    assert '| loss | size | shape | mmdet ms | mmloss ms |' in markdown
    printed = capsys.readouterr().out
    for name in names:
        assert f'| {name} | small |' in markdown
        assert any(line.startswith(name) for line in printed.splitlines())


class _Broken(torch.nn.Module):
    def forward(self, *args):
        raise RuntimeError('broken on purpose')


def _run_giou_small(tmp_path):
    return bench.main(['--losses', 'GIoULoss', '--size', 'small', '--repeat',
                       '1', '--warmup', '0', '--threads', '1', '--out',
                       str(tmp_path), '--no-progress'])


def test_mmloss_error_fails_the_run(monkeypatch, mmdet_losses, tmp_path,
                                    capsys):
    monkeypatch.setattr(bench, 'has_mmloss', lambda case: True)
    monkeypatch.setattr(bench, 'build_mmloss', lambda case, device: _Broken())
    assert _run_giou_small(tmp_path) == 1
    captured = capsys.readouterr()
    assert 'ERROR' in captured.out and 'broken on purpose' in captured.err
    row = json.loads((tmp_path / 'benchmark.json').read_text())['rows'][0]
    assert row['mmloss']['status'] == 'error' and row['agree'] is None
    # mmdet's side is still measured.
    assert row['mmdet']['status'] == 'ok' and row['mmdet']['ms'] > 0


def test_mmdet_error_is_reported_not_failed(monkeypatch, mmdet_as_mmloss,
                                            tmp_path, capsys):
    monkeypatch.setattr(bench, 'build_mmdet', lambda case, device: _Broken())
    monkeypatch.setattr(bench, 'build_mmloss',
                        lambda case, device: bench.mmdet_registry().build(
                            dict(type='GIoULoss')))
    assert _run_giou_small(tmp_path) == 0
    assert 'mmdet error' in capsys.readouterr().out
    row = json.loads((tmp_path / 'benchmark.json').read_text())['rows'][0]
    assert row['mmdet']['status'] == 'error' and row['mmloss']['ms'] > 0


def test_fast_losses_get_enough_timed_runs():
    # 0.5 s per side at 2 ms a run (the slower side decides): 250 runs
    assert bench.timed_runs(7, 0.5, [1.0, 2.0]) == 250
    # slow losses keep --repeat, very fast ones are capped
    assert bench.timed_runs(7, 0.5, [300.0]) == 7
    assert bench.timed_runs(7, 0.5, [0.001]) == bench.MAX_RUNS
    # --min-time 0 or no warm-up estimate: exactly --repeat
    assert bench.timed_runs(7, 0.0, [1.0]) == 7
    assert bench.timed_runs(7, 0.5, []) == 7


def test_min_time_adds_runs_to_a_fast_case():
    row = bench.run_case(_case('L1Loss'), 'small', torch.device('cpu'),
                         repeat=2, warmup=1, use_mmdet=False, min_time=0.01)
    assert len(row['mmloss']['runs_ms']) > 2  # ~0.1 ms a run
    row = bench.run_case(_case('L1Loss'), 'small', torch.device('cpu'),
                         repeat=2, warmup=1, use_mmdet=False, min_time=0)
    assert len(row['mmloss']['runs_ms']) == 2


def test_readme_option_replaces_only_the_marked_table(tmp_path):
    """``--readme`` rewrites the text between the markers (the run line and
    the table of the rows it ran) and leaves the rest of the file alone."""
    readme = tmp_path / 'README.md'
    readme.write_text('intro\n<!-- benchmark:start -->\nold table\n'
                      '<!-- benchmark:end -->\noutro\n')
    status = bench.main(['--losses', 'L1Loss', '--size', 'small',
                         '--repeat', '1', '--warmup', '0', '--min-time', '0',
                         '--threads', '1', '--out', str(tmp_path / 'out'),
                         '--no-progress', '--readme', str(readme)])
    assert status == 0
    text = readme.read_text()
    assert text.startswith('intro\n<!-- benchmark:start -->\nRun ')
    assert text.endswith('<!-- benchmark:end -->\noutro\n')
    assert 'old table' not in text
    assert '| L1Loss | small | 1000x4 |' in text
    assert '| loss | size | shape | mmdet ms | mmloss ms |' in text


def test_readme_without_markers_is_an_error(tmp_path):
    readme = tmp_path / 'README.md'
    readme.write_text('no markers here\n')
    with pytest.raises(ValueError, match='benchmark:start'):
        bench.update_readme(str(readme), [], {})
    assert readme.read_text() == 'no markers here\n'


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
@pytest.mark.parametrize('size', ['small', 'large'])
@pytest.mark.parametrize('case', [c for c in bench.CASES if c.in_mmdet],
                         ids=lambda c: c.key)
def test_twins_equal_mmdet_on_cuda(case, size, mmdet_losses):
    """On a GPU every twin equals mmdet's there (mmdet's FocalLoss runs
    mmcv's fused CUDA kernel), value and input gradient."""
    row = bench.run_case(case, size, torch.device('cuda'), repeat=1,
                         warmup=0, use_mmdet=True)
    assert row['mmloss']['status'] == 'ok', row['mmloss']['error']
    assert row['agree'] is True, row['agreement']


def test_cli_with_rows_prints_and_writes_the_row_count(tmp_path, capsys):
    """``--rows`` rows carry an int size: the text table, the Markdown and
    the JSON all take it."""
    status = bench.main(['--losses', 'L1Loss', '--size', 'small', '--rows',
                         '96', '--repeat', '1', '--warmup', '0', '--threads',
                         '1', '--min-time', '0', '--out', str(tmp_path),
                         '--no-progress'])
    assert status == 0
    rows = json.loads((tmp_path / 'benchmark.json').read_text())['rows']
    assert [row['size'] for row in rows] == ['small', 96]
    assert '| L1Loss | 96 |' in (tmp_path / 'benchmark.md').read_text()
    printed = capsys.readouterr().out.splitlines()
    assert any(line.startswith('L1Loss') and ' 96 ' in line
               for line in printed)


def test_rounds_pool_the_timed_runs_of_every_round(tmp_path):
    """``--rounds 3``: one row per case whose sides hold the timed runs of
    all three rounds, their median as ``ms``, each round's own speed-up
    kept; the rounds are named in the reports."""
    status = bench.main(['--losses', 'L1Loss', '--size', 'small',
                         '--rounds', '3', '--repeat', '2', '--warmup', '0',
                         '--threads', '1', '--min-time', '0', '--out',
                         str(tmp_path), '--no-progress'])
    assert status == 0
    report = json.loads((tmp_path / 'benchmark.json').read_text())
    assert report['meta']['rounds'] == 3
    row, = report['rows']
    assert len(row['mmloss']['runs_ms']) == 6
    assert row['mmloss']['ms'] == statistics.median(row['mmloss']['runs_ms'])
    if row['mmdet']:
        assert len(row['mmdet']['runs_ms']) == 6
        assert len(row['round_speedups']) == 3
        assert row['speedup'] == pytest.approx(
            row['mmdet']['ms'] / row['mmloss']['ms'])
    assert 'in each of 3 round(s)' in (tmp_path / 'benchmark.md').read_text()
    with pytest.raises(SystemExit):
        bench.parse_args(['--rounds', '0'])


def test_a_failure_in_any_round_fails_the_merged_row():
    def ok():
        side = bench._side('ok')
        side.update(runs_ms=[1.0], ms=1.0)
        return side

    rows = [dict(loss='L1Loss', size='small', agree=agree, agreement={
        'agree': agree}, mmloss=ok(), mmdet=ok(), speedup=1.0,
        target=None) for agree in (True, False, True)]
    merged = bench.merge_rounds(rows, torch.device('cpu'))
    assert merged['agree'] is False and bench.row_failed(merged)
    rows[1]['mmloss'] = dict(bench._side('error'), error='run: boom')
    assert bench.merge_rounds(rows, torch.device('cpu'))['mmloss'][
        'status'] == 'error'


REAL_RUN = bench.subprocess.run


def _fake_run(handle):
    """A ``subprocess.run`` stand-in for the benchmark's own command line
    (``handle(flags)``); anything else (``platform``'s ``uname``) runs."""
    def run(command, **kwargs):
        if command[:2] != [sys.executable, str(TOOL)]:
            return REAL_RUN(command, **kwargs)
        return handle(command)
    return run


def _in_process_run(calls):
    """Run the benchmark command in this process (the plumbing of
    ``--isolate`` without a child's start-up)."""
    def handle(command):
        calls.append(command)
        status = bench.main(command[2:])
        return bench.subprocess.CompletedProcess(command, status, '', '')
    return _fake_run(handle)


def test_isolate_runs_each_loss_once_per_round_with_every_size(
        monkeypatch, tmp_path):
    """``--isolate``: one process per loss and round, asked for every size
    (named and ``--rows``) with this run's settings; its rows land in the
    report as if measured here, runs pooled over the rounds."""
    calls = []
    monkeypatch.setattr(bench.subprocess, 'run', _in_process_run(calls))
    status = bench.main(['--isolate', '--losses', 'L1Loss', 'MSELoss',
                         '--size', 'small', '--rows', '96', '--rounds', '2',
                         '--repeat', '1', '--warmup', '0', '--threads', '1',
                         '--min-time', '0', '--out', str(tmp_path),
                         '--no-progress'])
    assert status == 0
    assert len(calls) == 4
    for command in calls:
        flags = command[2:]
        assert flags[flags.index('--size') + 1] == 'small'
        assert flags[flags.index('--rows') + 1] == '96'
        assert flags[flags.index('--threads') + 1] == '1'
    assert [c[c.index('--losses') + 1] for c in calls] == [
        'L1Loss', 'MSELoss', 'L1Loss', 'MSELoss']
    report = json.loads((tmp_path / 'benchmark.json').read_text())
    assert report['meta']['isolate'] is True
    assert 'its own process' in (tmp_path / 'benchmark.md').read_text()
    rows = report['rows']
    assert [(row['loss'], row['size']) for row in rows] == [
        ('L1Loss', 'small'), ('L1Loss', 96), ('MSELoss', 'small'),
        ('MSELoss', 96)]
    assert all(len(row['mmloss']['runs_ms']) == 2 for row in rows)


def test_isolate_only_rows_and_a_failed_process(monkeypatch, tmp_path,
                                                capsys):
    """Only ``--rows`` sizes pass ``--size none``; a process that writes
    no report gives error rows that fail the run, with its stderr."""
    def broken(command):
        flags = command[2:]
        assert flags[flags.index('--size') + 1] == 'none'
        return bench.subprocess.CompletedProcess(command, 3, '', 'boom')

    monkeypatch.setattr(bench.subprocess, 'run', _fake_run(broken))
    status = bench.main(['--isolate', '--losses', 'L1Loss', '--size', 'none',
                         '--rows', '96', '--repeat', '1', '--warmup', '0',
                         '--min-time', '0', '--out', str(tmp_path),
                         '--no-progress'])
    assert status == 1
    row, = json.loads((tmp_path / 'benchmark.json').read_text())['rows']
    assert row['mmloss']['status'] == 'error'
    assert 'exit 3' in row['mmloss']['error'] and 'boom' in \
        row['mmloss']['error']
    assert 'FAILED L1Loss (96)' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(['--size', 'none'])


@pytest.mark.slow
def test_isolate_in_a_real_process(tmp_path):
    """The real thing: a child Python process measures the loss."""
    status = bench.main(['--isolate', '--losses', 'L1Loss', '--size',
                         'small', '--repeat', '1', '--warmup', '0',
                         '--min-time', '0', '--out', str(tmp_path),
                         '--no-progress'])
    assert status == 0
    row, = json.loads((tmp_path / 'benchmark.json').read_text())['rows']
    assert row['mmloss']['status'] == 'ok' and row['mmloss']['ms'] > 0
