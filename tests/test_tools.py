"""The newcomer's path through tools/: threads, header, dataset progress.

* ``choose_cpu_threads`` on fake affinity, load and environment values;
* the header tools/train.py prints before mmengine's output;
* the progress tools/make_shapes_dataset.py shows while drawing.
"""
import io

import pytest

pytest.importorskip('mmdet')

from mmengine.config import Config  # noqa: E402

from tests.test_configs import DEFAULT_CONFIG, ROOT, load_tool  # noqa: E402

threads = load_tool('cpu_threads')


def choose(requested='auto', env=None, affinity=2, cpu_count=2, load=0.0,
           current=64):
    return threads.choose_cpu_threads(requested, env=env or {},
                                      affinity=affinity, cpu_count=cpu_count,
                                      load=load, current=current)[0]


def test_auto_takes_idle_cores_of_the_affinity():
    assert choose(affinity=8, cpu_count=8, load=0.0) == 8
    # other processes keep 5 of 8 cores busy
    assert choose(affinity=8, cpu_count=8, load=5.2) == 3
    # the 2-core machine of issue 16, one other job running: 1 thread
    assert choose(affinity=2, cpu_count=2, load=1.3) == 1
    # overloaded: still one thread
    assert choose(affinity=2, cpu_count=2, load=9.0) == 1
    # affinity limits the cores even on an idle 64-core machine
    assert choose(affinity=4, cpu_count=64, load=0.0) == 4
    # busy cores elsewhere on a big machine do not take ours
    assert choose(affinity=4, cpu_count=64, load=30.0) == 4


def test_auto_shares_cores_between_local_processes():
    env = {'LOCAL_WORLD_SIZE': '2'}
    assert choose(env=env, affinity=8, cpu_count=8, load=0.0) == 4
    assert choose(env=env, affinity=8, cpu_count=8, load=4.0) == 2
    assert choose(env={'LOCAL_WORLD_SIZE': '4'}, affinity=2,
                  cpu_count=2, load=0.0) == 1


def test_auto_keeps_the_users_choice():
    assert choose(env={'OMP_NUM_THREADS': '3'}, affinity=8, cpu_count=8) == 3
    assert choose(env={'MKL_NUM_THREADS': '5'}, affinity=8, cpu_count=8) == 5
    # torch.set_num_threads(2) by the user: never raised
    assert choose(affinity=8, cpu_count=8, current=2) == 2
    number, reason = threads.choose_cpu_threads(
        'auto', env={'OMP_NUM_THREADS': '3'}, affinity=8, cpu_count=8,
        load=0.0, current=8)
    assert reason == 'OMP_NUM_THREADS=3'
    # None (key unset) is 'auto'
    assert choose(None, affinity=8, cpu_count=8, load=6.0) == 2


def test_explicit_count_is_split_between_local_processes():
    assert choose(4, affinity=2, cpu_count=2, load=5.0) == 4
    assert choose(4, env={'LOCAL_WORLD_SIZE': '2'}) == 2
    assert choose(1, env={'LOCAL_WORLD_SIZE': '2'}) == 1
    for bad in (0, -1, 'two', 1.5, True):
        with pytest.raises(ValueError, match='cpu_threads must be'):
            choose(bad)


def test_reason_names_what_was_seen():
    _, reason = threads.choose_cpu_threads(
        'auto', env={'LOCAL_WORLD_SIZE': '2'}, affinity=8, cpu_count=8,
        load=2.0, current=8)
    assert reason == ('auto: 8 usable core(s), load 2.0 on 8, '
                      '2 local processes')


def test_shipped_configs_default_to_auto():
    cfg = Config.fromfile(f'{ROOT}/{DEFAULT_CONFIG}')
    assert cfg.cpu_threads == 'auto'


def test_header_names_losses_origin_dataset_and_threads(monkeypatch):
    train = load_tool('train')
    monkeypatch.chdir(ROOT)
    load_tool('make_shapes_dataset').ensure_shapes_dataset('data/shapes')
    args = train.parse_args([
        DEFAULT_CONFIG, '--cfg-options',
        'model.bbox_head.loss_cls.type=FocalLoss'])
    cfg = train.build_config(args)
    out = io.StringIO()
    train.print_header(cfg, DEFAULT_CONFIG, (1, 'auto: test'), 'train', out)
    lines = out.getvalue().splitlines()
    assert lines[0] == f'mmloss train: {DEFAULT_CONFIG}'
    text = out.getvalue()
    assert 'bbox_head.loss_cls = FocalLoss (mmdet)' in text
    assert 'bbox_head.loss_bbox = L1Loss (mmloss)' in text
    assert ('dataset:  train split, 300 images '
            '(data/shapes/annotations/train.json)') in text
    assert lines[-1] == '  threads:  1 (auto: test)'
    # indices and repeats of a derived config
    assert train.dataset_size(dict(
        type='RepeatDataset', times=3, dataset=dict(
            ann_file='a.json', data_root='d/', indices=[0, 1]))) == \
        '2 images x 3 repeats (d/a.json)'


def test_header_only_on_rank_zero(monkeypatch):
    train = load_tool('train')
    cfg = Config.fromfile(f'{ROOT}/{DEFAULT_CONFIG}')
    cfg.work_dir = 'w'
    monkeypatch.setenv('RANK', '1')
    out = io.StringIO()
    train.print_header(cfg, DEFAULT_CONFIG, (1, 'x'), 'train', out)
    assert out.getvalue() == ''


def test_train_accepts_trust_checkpoint():
    train = load_tool('train')
    assert train.parse_args([DEFAULT_CONFIG]).trust_checkpoint is False
    assert train.parse_args(
        [DEFAULT_CONFIG, '--trust-checkpoint']).trust_checkpoint is True


def test_dataset_generation_shows_progress(tmp_path, monkeypatch):
    maker = load_tool('make_shapes_dataset')
    monkeypatch.setattr(maker, 'SPLITS', {'train': (8, 0), 'val': (4, 1)})
    out = io.StringIO()
    maker.make_shapes_dataset(str(tmp_path / 'shapes'), stream=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == (f'Generating the bundled shapes dataset in '
                        f'{tmp_path / "shapes"} (12 images, first use only)')
    # not a terminal: one line per quarter of each split
    assert lines[1:5] == [f'  train: {n}/8 images' for n in (2, 4, 6, 8)]
    assert lines[5:9] == [f'  val: {n}/4 images' for n in (1, 2, 3, 4)]
    assert lines[9].startswith('  done in ') and lines[9].endswith(' s')
    # present: nothing drawn, nothing printed
    out = io.StringIO()
    maker.make_shapes_dataset(str(tmp_path / 'shapes'), stream=out)
    assert out.getvalue() == ''
    out = io.StringIO()
    maker.make_shapes_dataset(str(tmp_path / 'quiet'), progress=False,
                              stream=out)
    assert out.getvalue() == '' and maker.is_complete(str(tmp_path / 'quiet'))


def test_progress_redraws_in_place_on_a_terminal():
    maker = load_tool('make_shapes_dataset')

    class Terminal(io.StringIO):

        def isatty(self):
            return True

    out = Terminal()
    progress = maker.Progress('d', 3, out)
    for i in range(3):
        progress.step('val', i, 3)
    assert out.getvalue().endswith(
        '\r  val: 1/3 images\r  val: 2/3 images\r  val: 3/3 images\n')


def _loss_types(node, found=None):
    """Every ``type`` of a ``loss*`` dict in a config node."""
    found = [] if found is None else found
    if isinstance(node, dict):
        for key, value in node.items():
            if key.startswith('loss') and isinstance(value, dict) and \
                    'type' in value:
                found.append(value['type'])
            _loss_types(value, found)
    elif isinstance(node, (list, tuple)):
        for item in node:
            _loss_types(item, found)
    return found


@pytest.mark.parametrize('tool', ['train', 'test'])
def test_swap_losses_flag_swaps_an_mmdet_zoo_config(tool, capsys):
    """``--swap-losses`` on an ``mmdet::`` package config: every loss of
    the model becomes its mmloss twin before --cfg-options, and the table
    of what was swapped is printed."""
    module = load_tool(tool)
    config = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
    argv = [config, '--swap-losses', '--cfg-options',
            'model.roi_head.bbox_head.loss_bbox.type=mmloss.GIoULoss']
    if tool == 'test':
        argv.insert(1, 'checkpoint.pth')
    cfg = module.build_config(module.parse_args(argv))
    types = _loss_types(cfg.model)
    assert len(types) == 4 and all(t.startswith('mmloss.') for t in types)
    # --cfg-options applies after the swap
    assert cfg.model.roi_head.bbox_head.loss_bbox.type == 'mmloss.GIoULoss'
    printed = capsys.readouterr().out
    assert 'model.rpn_head.loss_cls' in printed and 'swapped' in printed


def test_without_the_flag_nothing_is_swapped():
    train = load_tool('train')
    cfg = train.build_config(train.parse_args(
        ['mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py']))
    assert not any(t.startswith('mmloss.') for t in _loss_types(cfg.model))


def test_busy_cores_samples_the_cpu_times_now(tmp_path):
    """The load is the busy share of the CPU time between two reads of
    /proc/stat (not the lagging load average): 150 of 200 jiffies busy on
    2 cores is 1.5 busy cores; an unreadable file falls back."""
    from cpu_threads import busy_cores
    stat = tmp_path / 'stat'
    reads = iter(['cpu 100 0 100 800 0 0 0 0 0 0\n',
                  'cpu 250 0 100 850 0 0 0 0 0 0\n'])

    class Stat:
        def __init__(self, *args):
            self.line = next(reads)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def readline(self):
            return self.line

    import builtins
    original = builtins.open
    builtins.open = lambda path, *a, **k: Stat() if path == str(stat) \
        else original(path, *a, **k)
    try:
        assert busy_cores(0.0, cpu_count=2, stat_path=str(stat)) == \
            pytest.approx(1.5)
    finally:
        builtins.open = original
    missing = busy_cores(0.0, cpu_count=2, stat_path=str(tmp_path / 'no'))
    assert missing is None or missing >= 0
