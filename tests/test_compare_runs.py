"""tools/compare_runs.py on synthetic MMEngine scalar logs."""
import importlib.util
import json
import os.path as osp
import subprocess
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(REPO, 'tools', 'compare_runs.py')
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def load_tool():
    spec = importlib.util.spec_from_file_location('compare_runs', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cr = load_tool()


def write_run(work_dir, timestamp='20240101_120000', epochs=3,
              iters_per_epoch=20, interval=5, loss_scale=1.0, map_gain=0.1,
              file_name='scalars.json', vis_data=True):
    """An epoch-based MMEngine log, as LoggerHook + LocalVisBackend write."""
    folder = work_dir / timestamp
    folder = folder / 'vis_data' if vis_data else folder
    folder.mkdir(parents=True)
    lines = []
    for epoch in range(1, epochs + 1):
        for i in range(interval, iters_per_epoch + 1, interval):
            it = (epoch - 1) * iters_per_epoch + i
            lines.append({
                'lr': 0.01, 'data_time': 0.01, 'loss': loss_scale * 2 / it,
                'loss_cls': loss_scale / it, 'loss_bbox': loss_scale / it,
                'time': 0.2, 'epoch': epoch, 'iter': it, 'memory': 100,
                'step': it})
        lines.append({'coco/bbox_mAP': map_gain * epoch,
                      'coco/bbox_mAP_50': 2 * map_gain * epoch,
                      'data_time': 0.01, 'time': 0.1, 'step': epoch})
    path = folder / file_name
    path.write_text(''.join(json.dumps(line) + '\n' for line in lines))
    return path


def assert_png(path):
    with open(path, 'rb') as f:
        head = f.read(8)
    assert head == PNG_SIGNATURE, path
    assert osp.getsize(path) > 1000
    import matplotlib.image
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_reads_train_and_val_lines(tmp_path):
    write_run(tmp_path / 'focal')
    run = cr.read_run(str(tmp_path / 'focal'))
    assert run.label == 'focal'
    assert run.last_iter == 60
    assert run.train['loss'].iters[:2] == [5, 10]
    assert run.train['loss_cls'].values[0] == pytest.approx(1 / 5)
    assert 'lr' in run.train and 'memory' not in run.train
    # mAP of epoch e is placed at the last iteration of epoch e.
    assert run.val['coco/bbox_mAP'].iters == [20, 40, 60]
    assert run.val['coco/bbox_mAP'].values == pytest.approx([0.1, 0.2, 0.3])


def test_latest_timestamp_with_a_log_wins(tmp_path):
    write_run(tmp_path / 'r', timestamp='20240101_000000', loss_scale=1.0)
    write_run(tmp_path / 'r', timestamp='20240202_000000', loss_scale=5.0)
    (tmp_path / 'r' / '20240303_000000').mkdir()  # a run that crashed
    run = cr.read_run(str(tmp_path / 'r'))
    assert '20240202_000000' in run.log_path
    assert run.train['loss_cls'].values[0] == pytest.approx(1.0)


@pytest.mark.parametrize('layout', ['vis_timestamp', 'top_timestamp'])
def test_timestamp_json_is_found(tmp_path, layout):
    ts = '20240101_120000'
    write_run(tmp_path / 'w', timestamp=ts, file_name=f'{ts}.json',
              vis_data=layout == 'vis_timestamp')
    run = cr.read_run(str(tmp_path / 'w'))
    assert run.log_path.endswith(f'{ts}.json')
    assert run.val['coco/bbox_mAP'].values[-1] == pytest.approx(0.3)
    # a timestamp folder and the file itself work too
    assert cr.read_run(str(tmp_path / 'w' / ts)).label == 'w'
    assert cr.read_run(run.log_path).last_iter == 60


def test_hierarchical_keys_and_iteration_based_logs(tmp_path):
    folder = tmp_path / 'it' / '20240101_000000' / 'vis_data'
    folder.mkdir(parents=True)
    lines = [{'train/loss': 1.0, 'train/loss_cls': 0.5, 'iter': 10,
              'step': 10},
             {'train/loss': 0.5, 'train/loss_cls': 0.25, 'iter': 20,
              'step': 20},
             {'val/coco/bbox_mAP': 0.4, 'step': 20}]
    (folder / 'scalars.json').write_text(
        '\n'.join(map(json.dumps, lines)) + '\n{"truncated": ')
    run = cr.read_run(str(tmp_path / 'it'))
    assert run.train['loss'].values == [1.0, 0.5]
    assert run.val['coco/bbox_mAP'].iters == [20]


def test_compare_writes_figures_and_table(tmp_path):
    for name, scale, gain in [('focal', 1.0, 0.10), ('ghm', 1.5, 0.12),
                              ('giou', 0.8, 0.15)]:
        write_run(tmp_path / name, loss_scale=scale, map_gain=gain)
    out = tmp_path / 'out'
    combined = tmp_path / 'fig' / 'compare.png'
    written, table = cr.compare(
        [str(tmp_path / n) for n in ('focal', 'ghm', 'giou')], str(out),
        smooth=3, combined=str(combined), title='synthetic')
    names = {osp.basename(p) for p in written}
    assert names == {'loss.png', 'loss_bbox.png', 'loss_cls.png',
                     'coco_bbox_mAP.png', 'compare.png', 'summary.md'}
    for path in written:
        if path.endswith('.png'):
            assert_png(path)
    assert (out / 'summary.md').read_text() == table
    rows = table.strip().splitlines()
    assert rows[0] == ('| Run | iterations | final loss | final loss_bbox | '
                       'final loss_cls | final coco/bbox_mAP | '
                       'best coco/bbox_mAP (iter) |')
    assert len(rows) == 5
    assert rows[4] == ('| giou | 60 | 0.0267 | 0.0133 | 0.0133 | 0.4500 | '
                       '0.4500 (60) |')


def test_metrics_and_labels_options(tmp_path):
    write_run(tmp_path / 'a')
    write_run(tmp_path / 'b')
    written, table = cr.compare(
        [str(tmp_path / 'a'), str(tmp_path / 'b')], str(tmp_path / 'o'),
        labels=['Focal', 'GHM'], metrics=['coco/bbox_mAP_50'])
    assert [osp.basename(p) for p in written] == ['coco_bbox_mAP_50.png',
                                                  'summary.md']
    assert '| Focal | 60 | 0.6000 | 0.6000 (60) |' in table


def test_moving_average():
    assert cr.moving_average([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]
    assert cr.moving_average([1, 2], 1) == [1, 2]


def test_empty_work_dir_fails_clearly(tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(cr.CompareRunsError, match='no MMEngine scalar log'):
        cr.read_run(str(tmp_path / 'empty'))
    with pytest.raises(SystemExit) as exc:
        cr.main([str(tmp_path / 'empty'), '--out-dir', str(tmp_path / 'o')])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert 'no MMEngine scalar log under' in err and 'empty' in err
    assert not (tmp_path / 'o').exists()


def test_missing_path_and_empty_log_fail_clearly(tmp_path):
    with pytest.raises(cr.CompareRunsError, match='does not exist'):
        cr.read_run(str(tmp_path / 'nope'))
    log = tmp_path / 'x.json'
    log.write_text('\n')
    with pytest.raises(cr.CompareRunsError, match='holds no scalars'):
        cr.read_run(str(log))
    log.write_text('{"loss": 1}\nnot json\n{"loss": 2}\n')
    with pytest.raises(cr.CompareRunsError, match=r'x.json:2 is not a JSON'):
        cr.read_run(str(log))


def test_unknown_metric_and_bad_labels_fail_clearly(tmp_path):
    write_run(tmp_path / 'a')
    with pytest.raises(cr.CompareRunsError,
                       match=r'metric coco/segm_mAP is in none.*loss_cls'):
        cr.compare([str(tmp_path / 'a')], str(tmp_path / 'o'),
                   metrics=['coco/segm_mAP'])
    with pytest.raises(cr.CompareRunsError, match='2 labels for 1 runs'):
        cr.compare([str(tmp_path / 'a')], str(tmp_path / 'o'),
                   labels=['x', 'y'])


def test_command_line(tmp_path):
    write_run(tmp_path / 'focal')
    out = tmp_path / 'out'
    done = subprocess.run(
        [sys.executable, TOOL, str(tmp_path / 'focal'), '--out-dir',
         str(out), '--smooth', '2'],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('| Run | iterations | final loss |')
    assert f'wrote {out / "summary.md"}' in done.stdout
    assert_png(out / 'coco_bbox_mAP.png')
    done = subprocess.run([sys.executable, TOOL, str(tmp_path / 'none')],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert 'does not exist' in done.stderr


def write_text_log(work_dir, timestamp, epochs, iters_per_epoch, interval):
    """The ``<timestamp>.log`` text log of :func:`write_run`'s run."""
    lines = []
    for epoch in range(1, epochs + 1):
        for i in range(interval, iters_per_epoch + 1, interval):
            lines.append(f'2024/01/01 12:00:00 - mmengine - INFO - '
                         f'Epoch(train)  [{epoch}][{i:>3}/{iters_per_epoch}]'
                         f'  lr: 1.0000e-02  loss: 0.5')
        lines.append(f'2024/01/01 12:00:00 - mmengine - INFO - Saving '
                     f'checkpoint at {epoch} epochs')
    (work_dir / timestamp / f'{timestamp}.log').write_text(
        '\n'.join(lines) + '\n')


@pytest.mark.parametrize('text_log', [False, True])
def test_epoch_metrics_at_true_epoch_end(tmp_path, text_log):
    # 57 iterations per epoch logged every 10: the last lines of the epochs
    # are at 50, 107, 164, 221, the epochs end at 57, 114, 171, 228.
    write_run(tmp_path / 'r', epochs=4, iters_per_epoch=57, interval=10)
    if text_log:
        write_text_log(tmp_path / 'r', '20240101_120000', 4, 57, 10)
    run = cr.read_run(str(tmp_path / 'r'))
    assert run.train['loss'].iters[-1] == 221
    assert run.iters_per_epoch == 57
    assert run.val['coco/bbox_mAP'].iters == [57, 114, 171, 228]
    assert run.last_iter == 228
    table = cr.summary_table([run], ['loss', 'coco/bbox_mAP'])
    assert table.splitlines()[2].startswith('| r | 228 | ')
    assert table.splitlines()[2].endswith('| 0.4000 (228) |')


def test_epoch_length_from_text_log_of_a_single_epoch(tmp_path):
    # One epoch: the scalars alone cannot tell its length, the text can.
    write_run(tmp_path / 'one', epochs=1, iters_per_epoch=57, interval=10)
    assert cr.read_run(str(tmp_path / 'one')).last_iter == 50
    write_text_log(tmp_path / 'one', '20240101_120000', 1, 57, 10)
    run = cr.read_run(str(tmp_path / 'one'))
    assert run.last_iter == 57
    assert run.val['coco/bbox_mAP'].iters == [57]


def test_unfinished_epoch_is_not_counted_whole(tmp_path):
    # A run stopped during epoch 3 (no validation, no checkpoint for it).
    path = write_run(tmp_path / 'r', epochs=3, iters_per_epoch=57,
                     interval=10)
    lines = path.read_text().splitlines()
    path.write_text('\n'.join(lines[:-2]) + '\n')  # drop 164, val of 3
    run = cr.read_run(str(tmp_path / 'r'))
    assert run.last_iter == 154  # its last logged line
    assert run.val['coco/bbox_mAP'].iters == [57, 114]


def test_epoch_shorter_than_logging_interval(tmp_path):
    # mmengine then logs each epoch's last iteration only.
    write_run(tmp_path / 'r', epochs=3, iters_per_epoch=7, interval=7)
    run = cr.read_run(str(tmp_path / 'r'))
    assert run.iters_per_epoch == 7
    assert run.val['coco/bbox_mAP'].iters == [7, 14, 21]
    assert run.last_iter == 21
