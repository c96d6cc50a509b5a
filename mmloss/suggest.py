"""Did-you-mean for unknown ``mmloss.*`` types.

MMEngine's registry answers a misspelt ``type='mmloss.GIoULos'`` with a
generic ``KeyError: 'mmloss.GIoULos is not in the mmdet::model registry'``.
:class:`SuggestingRegistry` is the registry class of ``mmloss.MODELS``: when a
lookup that belongs to the ``mmloss`` scope finds nothing, it raises
:class:`UnknownLossError` (a ``KeyError``) naming the registered names
closest to the one asked for::

    KeyError: mmloss.GIoULos is not a registered mmloss loss; did you mean
    `mmloss.GIoULoss`? Other close names: `mmloss.IoULoss`, `mmloss.SIoULoss`.
    (`python -m mmloss list` lists all 30)

The lookup from an mmdet config walks mmdet's registry -> the root -> this
scope, so the same error reaches ``mmdet.registry.MODELS.build(...)`` as well
as ``mmloss.MODELS.build(...)``. Closeness is :func:`difflib.get_close_matches`
on lower-cased names, so a wrong case (``GIoUloss``) is found too.
"""
import difflib
from typing import Iterable, List

from mmengine.registry import Registry

SCOPE = 'mmloss'


def closest_names(name: str, candidates: Iterable[str], n: int = 3,
                  cutoff: float = 0.6) -> List[str]:
    """Up to ``n`` of ``candidates`` closest to ``name``, best first.

    Compared case-insensitively (difflib's ratio, at least ``cutoff``); the
    candidates come back in their own spelling.
    """
    by_lower = {}
    for candidate in candidates:
        by_lower.setdefault(candidate.lower(), candidate)
    matches = difflib.get_close_matches(
        name.lower(), list(by_lower), n=n, cutoff=cutoff)
    return [by_lower[match] for match in matches]


class UnknownLossError(KeyError):
    """An ``mmloss`` type that is not registered, with the closest names."""

    def __init__(self, name: str, registered: Iterable[str]):
        registered = sorted(registered)
        self.name = name
        self.suggestions = closest_names(name, registered)
        qualified = f'{SCOPE}.{name}'
        if self.suggestions:
            best, *others = (f'`{SCOPE}.{s}`' for s in self.suggestions)
            hint = f'did you mean {best}?'
            if others:
                hint += f' Other close names: {", ".join(others)}.'
        else:
            hint = 'no registered name is close to it'
        message = (f'{qualified} is not a registered mmloss loss; {hint} '
                   f'(`python -m mmloss list` lists all {len(registered)})')
        super().__init__(message)
        self.message = message

    def __str__(self):
        # KeyError's own str() would quote the message.
        return self.message


class SuggestingRegistry(Registry):
    """An MMEngine ``Registry`` whose misses in its scope raise, with hints.

    ``get(key)`` returns what MMEngine's ``get`` returns; where that is
    ``None`` and ``key`` is unscoped or in this registry's scope, it raises
    :class:`UnknownLossError` instead. Keys of other scopes still give
    ``None``, and ``key in registry`` stays ``True``/``False``.
    """

    def get(self, key):
        found = super().get(key)
        if found is None and isinstance(key, str):
            scope, real_key = self.split_scope_key(key)
            if scope is None or scope == self.scope:
                raise UnknownLossError(real_key, self.module_dict)
        return found

    def __contains__(self, key):
        try:
            return self.get(key) is not None
        except UnknownLossError:
            return False
