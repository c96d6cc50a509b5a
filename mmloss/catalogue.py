"""The loss catalogue: every registered loss with its family, twin and paper.

``python -m mmloss list`` prints it; ``--format markdown`` gives the table the
README embeds between ``<!-- catalogue:start -->`` and
``<!-- catalogue:end -->`` (``--update-readme README.md`` rewrites just that
block). Each entry is read from the live registry:

* name: the registered class name (``type='mmloss.<name>'`` in a config);
* family: the module under :mod:`mmloss.losses` that defines it;
* mmdet twin: the same class name registered in MMDetection 3.3's
  ``MODELS`` (``type='<name>'``), from the static :data:`MMDET_LOSS_NAMES`,
  so this module never imports mmdet (a test checks the set against the
  installed mmdet);
* arguments: the constructor's parameters and defaults
  (``inspect.signature``);
* paper: the line starting with ``Paper:`` in the class docstring, else in
  the family module's docstring, else ``-``.
"""
import inspect
import json
import re
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

from .registry import MODELS

#: Every loss class registered in MMDetection 3.3's ``MODELS`` (the classes
#: defined in ``mmdet.models.losses``). An mmloss loss of the same name is its
#: twin: same arguments, defaults and forward signature.
MMDET_LOSS_NAMES = frozenset({
    'AssociativeEmbeddingLoss', 'BalancedL1Loss', 'BoundedIoULoss',
    'CIoULoss', 'CrossEntropyCustomLoss', 'CrossEntropyLoss', 'DIoULoss',
    'DiceLoss', 'DistributionFocalLoss', 'EIoULoss', 'EQLV2Loss',
    'FocalCustomLoss', 'FocalLoss', 'GHMC', 'GHMR', 'GIoULoss',
    'GaussianFocalLoss', 'IoULoss', 'KnowledgeDistillationKLDivLoss',
    'L1Loss', 'L2Loss', 'MSELoss', 'MarginL2Loss', 'MultiPosCrossEntropyLoss',
    'QualityFocalLoss', 'SIoULoss', 'SeesawLoss', 'SmoothL1Loss',
    'TripletLoss', 'VarifocalLoss'
})

README_START = '<!-- catalogue:start -->'
README_END = '<!-- catalogue:end -->'

_LOSSES_PACKAGE = 'mmloss.losses.'
_PAPER_LINE = re.compile(r'^\s*Paper:\s*(.+?)\s*$', re.MULTILINE)


@dataclass(frozen=True)
class LossEntry:
    """One row of the catalogue."""
    name: str
    family: str
    mmdet_twin: Optional[str]
    arguments: str
    paper: str
    paper_source: str  # 'class', 'family' or 'none'


def _loss_modules() -> Dict[str, type]:
    # Importing the losses package registers every family (the registry's
    # ``locations`` would do the same lazily).
    import mmloss.losses  # noqa: F401
    return {
        name: cls
        for name, cls in MODELS.module_dict.items()
        if getattr(cls, '__module__', '').startswith(_LOSSES_PACKAGE)
    }


def family_of(cls: type) -> str:
    """The family module name of a loss class, e.g. ``'focal'``."""
    return cls.__module__[len(_LOSSES_PACKAGE):].split('.')[0]


def constructor_arguments(cls: type) -> str:
    """``name=default, ...`` of the constructor, ``*args``/``**kw`` kept."""
    parts = []
    for param in inspect.signature(cls.__init__).parameters.values():
        if param.name == 'self':
            continue
        if param.kind is param.VAR_POSITIONAL:
            parts.append(f'*{param.name}')
        elif param.kind is param.VAR_KEYWORD:
            parts.append(f'**{param.name}')
        elif param.default is param.empty:
            parts.append(param.name)
        else:
            parts.append(f'{param.name}={param.default!r}')
    return ', '.join(parts)


def paper_lines(doc: Optional[str]) -> List[str]:
    """The text after each ``Paper:`` line of a docstring."""
    return _PAPER_LINE.findall(inspect.cleandoc(doc)) if doc else []


def paper_of(cls: type):
    """``(paper, source)``: the class's ``Paper:`` lines, else the family's."""
    papers = paper_lines(inspect.getdoc(cls))
    if papers:
        return '; '.join(papers), 'class'
    module = inspect.getmodule(cls)
    papers = paper_lines(module.__doc__ if module else None)
    if papers:
        return '; '.join(papers), 'family'
    return '-', 'none'


def catalogue() -> List[LossEntry]:
    """Every registered mmloss loss, sorted by family then name."""
    entries = []
    for name, cls in _loss_modules().items():
        paper, source = paper_of(cls)
        entries.append(
            LossEntry(
                name=name,
                family=family_of(cls),
                mmdet_twin=name if name in MMDET_LOSS_NAMES else None,
                arguments=constructor_arguments(cls),
                paper=paper,
                paper_source=source))
    return sorted(entries, key=lambda e: (e.family, e.name.lower()))


def _md_cell(text: str) -> str:
    # A '|' inside a cell would end it.
    return text.replace('|', '\\|').replace('\n', ' ')


def render_markdown(entries: Sequence[LossEntry]) -> str:
    """The README table: one row per loss."""
    lines = [
        '| Loss (`type=`) | Family | mmdet twin | Arguments (defaults) '
        '| Paper |',
        '|---|---|---|---|---|',
    ]
    for e in entries:
        twin = f'`{e.mmdet_twin}`' if e.mmdet_twin else '-'
        lines.append(
            f'| `mmloss.{e.name}` | {e.family} | {twin} | '
            f'`{_md_cell(e.arguments)}` | {_md_cell(e.paper)} |')
    return '\n'.join(lines) + '\n'


def render_text(entries: Sequence[LossEntry]) -> str:
    """A plain listing for the terminal: one block per loss."""
    if not entries:
        return 'no losses registered\n'
    width = max(len(e.name) for e in entries)
    out = []
    for e in entries:
        twin = f'mmdet {e.mmdet_twin}' if e.mmdet_twin else 'no mmdet twin'
        out.append(f'{e.name:<{width}}  [{e.family}]  {twin}')
        out.append(f'{"":<{width}}  args:  {e.arguments}')
        out.append(f'{"":<{width}}  paper: {e.paper}')
    n_twins = sum(e.mmdet_twin is not None for e in entries)
    out.append(f'{len(entries)} losses, {n_twins} with an mmdet twin')
    return '\n'.join(out) + '\n'


def render_json(entries: Sequence[LossEntry]) -> str:
    """The catalogue as a JSON list of objects."""
    return json.dumps([asdict(e) for e in entries], indent=2) + '\n'


RENDERERS = {
    'text': render_text,
    'markdown': render_markdown,
    'json': render_json,
}


def readme_block(text: str) -> Optional[str]:
    """The text between the catalogue markers of a README, or None."""
    start = text.find(README_START)
    end = text.find(README_END)
    if start < 0 or end < start:
        return None
    return text[start + len(README_START):end].strip('\n') + '\n'


def replace_readme_block(text: str, table: str) -> str:
    """``text`` with the catalogue block replaced by ``table``.

    Raises:
        ValueError: the README has no (well-ordered) catalogue markers.
    """
    start = text.find(README_START)
    end = text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(
            f'catalogue: no {README_START} ... {README_END} block in the '
            'README; add the two marker lines where the table should go')
    return (text[:start + len(README_START)] + '\n' + table.rstrip('\n') +
            '\n' + text[end:])
