"""The hostile-input sweep against MMDetection: a report, not a test.

Runs every input kind of ``tests/test_hostile.py`` on every mmloss loss with
an MMDetection 3.3 twin, and the same calls on the twin, classifies both
outcomes (``finite``, ``nan``, ``error``, ``failure``; see that module) and
prints a Markdown table of the (loss, kind, call) where the two differ::

    .venv/bin/python tools/hostile_sweep.py                  # every twin
    .venv/bin/python tools/hostile_sweep.py --losses CIoULoss GHMC --all

An mmdet error never names the loss the way mmloss's do, so an mmdet
``AssertionError`` or ``RuntimeError`` shows as ``failure`` with its text.
``--all`` prints every call, not just the differing ones. The exit status
is 0 whatever the table says.
"""
import argparse
import os.path as osp
import sys
import warnings

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmloss.catalogue import MMDET_LOSS_NAMES  # noqa: E402
from tests.cases import CASES  # noqa: E402
from tests.test_hostile import (KINDS, ROLES, ROWS, Call,  # noqa: E402
                                classify)


def _mmdet_twin(name, like):
    """mmdet's loss of the same config, in the dtype of ``like``."""
    import mmdet.models.losses  # noqa: F401 -- registers mmdet's losses
    from mmdet.registry import MODELS as MMDET_MODELS
    loss = MMDET_MODELS.build(dict(type=name, **CASES[name].cfg))
    for tensor in list(like.buffers()) + list(like.parameters()):
        if tensor.is_floating_point():
            return loss.to(tensor.dtype)
    return loss


def _same_call_on(loss, call):
    leaf = call.leaf.detach().clone()
    if leaf.is_floating_point():
        leaf.requires_grad_()
    return Call(loss, (leaf, ) + tuple(call.args[1:]), dict(call.kwargs),
                check=call.check, what=call.what, autocast=call.autocast)


def sweep(names, rows=ROWS):
    """``[(name, kind, what, expect, ours, mmdet)]``, each outcome an
    ``(outcome, detail)`` pair."""
    table = []
    for name in names:
        for kind, spec in KINDS.items():
            if not spec.applies(name):
                continue
            for call in spec.calls(name, rows):
                twin = _same_call_on(_mmdet_twin(name, call.loss), call)
                with warnings.catch_warnings():
                    warnings.simplefilter('ignore')
                    ours = classify(name, call)
                    theirs = classify(name, twin)
                table.append((name, kind, call.what, spec.expect, ours,
                              theirs))
    return table


def _cell(outcome, width=70):
    text = f'{outcome[0]}: {outcome[1]}'.replace('|', '/')
    text = ' '.join(text.split())
    return text if len(text) <= width else text[:width - 3] + '...'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--losses', nargs='*',
                        help='losses to sweep (default: every mmdet twin)')
    parser.add_argument('--rows', type=int, default=ROWS)
    parser.add_argument('--all', action='store_true',
                        help='print every call, not only the differing')
    args = parser.parse_args(argv)
    names = args.losses or sorted(MMDET_LOSS_NAMES & set(ROLES))
    table = sweep(names, args.rows)
    print('| loss | kind | call | mmloss | mmdet |')
    print('|---|---|---|---|---|')
    differ = 0
    mmdet_only_fails = 0
    for name, kind, what, expect, ours, theirs in table:
        if ours[0] != theirs[0]:
            differ += 1
            if ours[0] in expect and theirs[0] not in expect:
                mmdet_only_fails += 1
        elif not args.all:
            continue
        print(f'| {name} | {kind} | {what} | {_cell(ours)} | '
              f'{_cell(theirs)} |')
    print(f'\n{len(table)} calls, {differ} with different outcomes; '
          f'{mmdet_only_fails} where mmdet misses the promise and mmloss '
          'keeps it.')
    return 0


if __name__ == '__main__':
    sys.exit(main())
