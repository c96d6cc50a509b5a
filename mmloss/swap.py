"""Swap every loss of an MMDetection config for its mmloss twin.

``python -m mmloss swap CONFIG [-o OUT]`` (and the ``--swap-losses`` flag of
``tools/train.py``/``tools/test.py``) rewrite a config so that every dict
whose ``type`` names an MMDetection 3.3 loss with an mmloss twin names the
twin instead (``'FocalLoss'`` or ``'mmdet.FocalLoss'`` ->
``'mmloss.FocalLoss'``), wherever it sits: heads, necks, RoI heads, lists of
stages. Everything else is left alone: a type that is not an mmdet loss
(assigners, their match costs such as ``FocalLossCost``, samplers, coders),
a loss of another scope, and an mmdet loss mmloss has no twin of (reported
with that reason). A loss a head builds from its constructor's default,
absent from the config, is not a dict of the config and stays mmdet's.

Which names are mmdet losses is the static
:data:`mmloss.catalogue.MMDET_LOSS_NAMES`; which have a twin is the mmloss
registry. Nothing here imports mmdet (loading an ``mmdet::`` config needs it
installed, as MMEngine resolves the package's configs).

:func:`swap_losses` returns the new config and one :class:`SwapRow` per loss
dict found; :func:`format_table` renders those rows.
"""
import copy
import os.path as osp
import tempfile
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

from .catalogue import MMDET_LOSS_NAMES
from .registry import MODELS

SCOPE = 'mmloss'

#: ``SwapRow.status`` values
SWAPPED, ALREADY_MMLOSS, NO_TWIN = 'swapped', 'already mmloss', 'no twin'


@dataclass(frozen=True)
class SwapRow:
    """One loss dict of a config: where it is and what became of it.

    Attributes:
        path (str): its place in the config, e.g.
            ``model.roi_head.bbox_head[0].loss_cls``.
        old_type (str): its ``type`` before the swap.
        new_type (str): its ``type`` after (``old_type`` when kept).
        status (str): ``'swapped'``, ``'already mmloss'`` or ``'no twin'``
            (an mmdet loss with no mmloss twin: it stays mmdet's).
    """
    path: str
    old_type: str
    new_type: str
    status: str


def twin_type(type_name: str) -> Tuple[Optional[str], str]:
    """``(new_type, status)`` for a config ``type``; ``(None, '')`` when it
    is not an mmdet loss or an mmloss one (left alone, not reported).

    ``'X'`` and ``'mmdet.X'`` with ``X`` an mmdet loss become ``'mmloss.X'``
    when mmloss registers ``X``; ``'mmloss.X'`` is already mmloss's.
    """
    scope, _, name = type_name.rpartition('.')
    if scope == SCOPE and name in MODELS.module_dict:
        return type_name, ALREADY_MMLOSS
    if scope not in ('', 'mmdet') or name not in MMDET_LOSS_NAMES:
        return None, ''
    if name in MODELS.module_dict:
        return f'{SCOPE}.{name}', SWAPPED
    return type_name, NO_TWIN


def _swap_in_place(node: Any, path: str, rows: List[SwapRow]) -> None:
    if isinstance(node, dict):
        type_name = node.get('type')
        if isinstance(type_name, str):
            new_type, status = twin_type(type_name)
            if new_type is not None:
                rows.append(SwapRow(path or '<root>', type_name, new_type,
                                    status))
                node['type'] = new_type
        for key, value in node.items():
            if key != 'type':
                _swap_in_place(value, f'{path}.{key}' if path else str(key),
                               rows)
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            _swap_in_place(value, f'{path}[{index}]', rows)


def swap_losses(cfg):
    """A copy of ``cfg`` with every mmdet loss that has a twin swapped.

    Args:
        cfg (mmengine.config.Config | dict): the config, ``_base_`` already
            resolved (``Config.fromfile`` or :func:`load_config`).

    Returns:
        tuple: ``(new_cfg, rows)``: the swapped copy (same type as ``cfg``;
        ``cfg`` itself is not changed) and a :class:`SwapRow` per loss dict
        found, in config order.
    """
    rows: List[SwapRow] = []
    if hasattr(cfg, 'to_dict') and hasattr(cfg, 'filename'):  # a Config
        from mmengine.config import Config
        tree = cfg.to_dict()
        _swap_in_place(tree, '', rows)
        filename = cfg.filename
        if not (filename and osp.exists(filename)):
            filename = None  # e.g. load_config's stub for an mmdet:: config
        return Config(tree, filename=filename), rows
    tree = copy.deepcopy(cfg)
    _swap_in_place(tree, '', rows)
    return tree, rows


def load_config(path: str):
    """``Config.fromfile(path)``, also for a package config such as
    ``'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'`` (loaded as the base
    of an empty config, which is how MMEngine resolves those)."""
    from mmengine.config import Config
    if '::' not in path or osp.exists(path):
        return Config.fromfile(path)
    with tempfile.TemporaryDirectory() as tmp:
        stub = osp.join(tmp, 'swap_base.py')
        with open(stub, 'w', encoding='utf-8') as f:
            f.write(f'_base_ = [{path!r}]\n')
        return Config.fromfile(stub)


def format_table(rows: List[SwapRow]) -> str:
    """The rows as a plain-text table (config path, old type, new type,
    what happened), then one line of counts."""
    header = ('config path', 'old type', 'new type', 'note')
    body = [(r.path, r.old_type,
             r.new_type if r.status != NO_TWIN else '-',
             {SWAPPED: 'swapped', ALREADY_MMLOSS: 'already mmloss',
              NO_TWIN: "stays mmdet's: mmloss has no twin"}[r.status])
            for r in rows]
    widths = [max(len(line[i]) for line in [header] + body)
              for i in range(len(header))]
    lines = ['  '.join(cell.ljust(w) for cell, w in zip(line, widths))
             .rstrip() for line in [header] + body]
    lines.insert(1, '  '.join('-' * w for w in widths))
    counts = {status: sum(r.status == status for r in rows)
              for status in (SWAPPED, ALREADY_MMLOSS, NO_TWIN)}
    lines.append(f'{counts[SWAPPED]} swapped, {counts[ALREADY_MMLOSS]} '
                 f'already mmloss, {counts[NO_TWIN]} without an mmloss twin '
                 f"(stay mmdet's)")
    return '\n'.join(lines) + '\n'
