"""Weights-only checkpoint loading of tools/train.py and tools/test.py.

A crafted ``.pth`` whose unpickling would run code (create a marker file)
is refused with a message naming the file and ``--trust-checkpoint``, and
the marker never appears; what mmengine stores beside the weights
(``HistoryBuffer`` logs with numpy arrays and scalars) still loads. The
end-to-end runs of both tools on real checkpoints are in test_training.py.
"""
import os
import os.path as osp
import pickle

import pytest

pytest.importorskip('mmdet')

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tests.test_configs import DEFAULT_CONFIG, ROOT, load_tool  # noqa: E402

safe = load_tool('safe_checkpoints')


class WritesMarker:
    """Unpickling this calls ``open(marker, 'w')``: it creates the file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


class RunsShell:
    """Unpickling this runs ``touch marker`` through ``os.system``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def crafted_checkpoint(tmp_path, payload_cls):
    marker = tmp_path / 'marker'
    path = tmp_path / 'crafted.pth'
    torch.save({'state_dict': {'w': torch.ones(2)},
                'meta': payload_cls(str(marker))}, path)
    return str(path), marker


@pytest.mark.parametrize('payload_cls', [WritesMarker, RunsShell])
def test_crafted_checkpoint_is_refused(tmp_path, payload_cls):
    path, marker = crafted_checkpoint(tmp_path, payload_cls)
    with pytest.raises(safe.UntrustedCheckpointError) as info:
        safe.load_checkpoint_file(path)
    message = str(info.value)
    assert path in message and '--trust-checkpoint' in message
    assert 'unsupported global' in message.lower()  # what was refused
    assert info.value.filename == path
    assert not marker.exists()


def test_getattr_is_limited_to_history_buffer_methods(tmp_path):
    # A checkpoint may name builtins.getattr (HistoryBuffer pickles its
    # statistics methods with it); the real getattr would reach any
    # attribute of an allowed class, e.g. __init__.__globals__.
    from mmengine.logging import HistoryBuffer

    class Escape:

        def __reduce__(self):
            return (getattr, (HistoryBuffer, '__init__'))

    path = tmp_path / 'escape.pth'
    torch.save({'meta': Escape()}, path)
    with pytest.raises(safe.UntrustedCheckpointError,
                       match=r"getattr\(.*'__init__'\) is not allowed"):
        safe.load_checkpoint_file(str(path))


def test_mmengine_checkpoint_contents_load(tmp_path):
    from mmengine.logging import HistoryBuffer, MessageHub
    hub = MessageHub.get_instance('mmloss-test-safe-load')
    for value in (0.5, 0.25):
        hub.update_scalar('train/loss', value)
    hub.update_scalar('val/coco/bbox_mAP', np.float64(0.75))
    hub.update_info('keep_ckpt_ids', [1, 2])
    path = tmp_path / 'epoch_1.pth'
    torch.save({'meta': {'epoch': 1, 'dataset_meta': {
                    'classes': ('a', 'b'), 'palette': [(1, 2, 3)]}},
                'state_dict': {'w': torch.arange(3.)},
                'message_hub': hub.state_dict(),
                'extra': {'array': np.arange(4, dtype=np.float32),
                          'dtype': np.dtype('int64'),
                          'scalar': np.int64(7)}}, path)
    globals_named = set(
        torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in globals_named
    assert 'builtins.getattr' in globals_named

    checkpoint = safe.load_checkpoint_file(str(path))
    buffer = checkpoint['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer)
    assert buffer.mean() == pytest.approx(0.375)
    assert buffer.statistics('current') == pytest.approx(0.25)
    assert checkpoint['message_hub']['log_scalars'][
        'val/coco/bbox_mAP'].current() == pytest.approx(0.75)
    np.testing.assert_array_equal(checkpoint['extra']['array'],
                                  np.arange(4, dtype=np.float32))
    assert checkpoint['extra']['dtype'] == np.dtype('int64')
    assert checkpoint['extra']['scalar'] == 7
    assert checkpoint['meta']['dataset_meta']['classes'] == ('a', 'b')


def test_loading_is_scoped_to_the_block(tmp_path, monkeypatch):
    from mmengine.runner.checkpoint import CheckpointLoader
    original = CheckpointLoader.__dict__['load_checkpoint']
    # A variable left in the environment does not undo the check ...
    monkeypatch.setenv(safe.FULL_UNPICKLING_ENV, '1')
    path, marker = crafted_checkpoint(tmp_path, WritesMarker)
    with pytest.raises(safe.UntrustedCheckpointError):
        safe.load_checkpoint_file(path)
    assert not marker.exists()
    # ... and is back, like the loader and the allow-list, after the block.
    assert os.environ[safe.FULL_UNPICKLING_ENV] == '1'
    assert CheckpointLoader.__dict__['load_checkpoint'] is original
    monkeypatch.delenv(safe.FULL_UNPICKLING_ENV)
    from mmengine.logging import HistoryBuffer
    assert HistoryBuffer not in torch.serialization.get_safe_globals()
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)
    assert not marker.exists()


def test_trust_flag_unpickles_fully_with_a_warning(tmp_path, capsys):
    path, marker = crafted_checkpoint(tmp_path, WritesMarker)
    safe.load_checkpoint_file(path, trust=True)
    assert marker.exists()  # what the flag is for: the user's own files
    err = capsys.readouterr().err
    assert 'WARNING: --trust-checkpoint' in err and 'run any code' in err
    assert safe.FULL_UNPICKLING_ENV not in os.environ


@pytest.mark.parametrize('tool', ['train', 'test'])
def test_tools_refuse_crafted_checkpoint(tool, tmp_path, monkeypatch,
                                         capsys):
    # The tools run the runner inside the same block; stop before any
    # training and make the runner load the crafted file as it would.
    path, marker = crafted_checkpoint(tmp_path, WritesMarker)
    module = load_tool(tool)
    monkeypatch.chdir(ROOT)

    from mmengine.runner import Runner

    def load_only(runner):
        runner.load_or_resume()

    monkeypatch.setattr(Runner, 'train', load_only)
    monkeypatch.setattr(Runner, 'test', load_only)
    argv = [DEFAULT_CONFIG, '--work-dir', str(tmp_path / 'work')]
    argv = (argv + ['--resume', path] if tool == 'train'
            else [DEFAULT_CONFIG, path] + argv[1:])
    with pytest.raises(SystemExit) as info:
        module.main(argv)
    assert isinstance(info.value.code, str)  # exit status 1, message
    assert path in info.value.code
    assert '--trust-checkpoint' in info.value.code
    assert not marker.exists()


def test_test_tool_checks_checkpoint_path_first(tmp_path, monkeypatch):
    test_tool = load_tool('test')
    from mmengine.runner import Runner

    def fail(*args, **kwargs):
        raise AssertionError('the runner was built')

    monkeypatch.setattr(Runner, 'from_cfg', fail)
    missing = str(tmp_path / 'missing.pth')
    with pytest.raises(SystemExit) as info:
        test_tool.main([osp.join(ROOT, DEFAULT_CONFIG), missing])
    assert info.value.code == (
        f'tools/test.py: checkpoint {missing} does not exist')
    with pytest.raises(SystemExit, match='is not a file'):
        test_tool.main([osp.join(ROOT, DEFAULT_CONFIG), str(tmp_path)])


def test_test_tool_out_and_show_dir_options(tmp_path):
    test_tool = load_tool('test')
    args = test_tool.parse_args([
        osp.join(ROOT, DEFAULT_CONFIG), 'ckpt.pth', '--out', 'p.pkl',
        '--show-dir', 'shown', '--trust-checkpoint'])
    assert args.trust_checkpoint
    cfg = test_tool.build_config(args)
    assert cfg.load_from == 'ckpt.pth' and cfg.resume is False
    assert cfg.test_evaluator[-1] == dict(type='DumpDetResults',
                                          out_file_path='p.pkl')
    hook = cfg.default_hooks.visualization
    assert hook.draw is True
    assert hook.test_out_dir == osp.abspath('shown')
    with pytest.raises(SystemExit, match='.pkl'):
        test_tool.build_config(test_tool.parse_args(
            [osp.join(ROOT, DEFAULT_CONFIG), 'c.pth', '--out', 'p.json']))
