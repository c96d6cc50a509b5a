"""The mmloss model registry.

``MODELS`` is a child of MMEngine's root ``MODELS`` with scope ``'mmloss'``.
MMDetection's registry is a sibling under the same root, so an mmdet config
resolves ``type='mmloss.FocalLoss'`` by walking up to the root and down into
this scope: MMEngine imports ``mmloss.registry`` for the scope on first use,
and ``locations`` then imports every loss module. Nothing is ever registered
into mmdet's registry, so ``type='FocalLoss'`` stays mmdet's own.

While ``mmdet.models.losses`` is imported, ``MODELS.get`` (hence ``build``,
and mmdet's registry resolving ``'mmloss.X'``) gives a twin of MMDetection
3.3 as its *twin class* (:func:`mmloss.compat.mmdet_compatible`): mmloss's
class first, mmdet's second, so heads that check
``isinstance(loss, mmdet.models.losses.X)`` accept it. ``module_dict``
always holds the plain mmloss classes.
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import build_model_from_cfg

from .compat import mmdet_compatible
from .suggest import SuggestingRegistry


def build_in_mmloss_scope(cfg, registry, default_args=None):
    """Build ``cfg`` with an unprefixed ``type`` looked up in mmloss.

    MMEngine resolves an unprefixed ``type`` in the *current default scope*,
    so under an mmdet runner ``mmloss.MODELS.build(dict(type='FocalLoss'))``
    would silently build mmdet's loss. Pinning ``_scope_='mmloss'`` (unless
    the config names one) makes our registry build our losses.
    """
    if isinstance(cfg, dict) and '_scope_' not in cfg:
        cfg = cfg.copy()
        cfg['_scope_'] = 'mmloss'
    return build_model_from_cfg(cfg, registry, default_args)


class LossRegistry(SuggestingRegistry):
    """The registry class of :data:`MODELS`.

    ``get`` gives a registered twin of an mmdet loss as its twin class while
    mmdet's losses are imported (:func:`mmloss.compat.mmdet_compatible`);
    its base, ``SuggestingRegistry``, makes an unknown ``mmloss.*`` type
    raise a ``KeyError`` naming the closest registered names
    (mmloss/suggest.py).
    """

    def get(self, key):
        cls = super().get(key)
        if isinstance(cls, type) and \
                self._module_dict.get(cls.__name__) is cls:
            return mmdet_compatible(cls)
        return cls


MODELS = LossRegistry(
    'model',
    parent=MMENGINE_MODELS,
    scope='mmloss',
    build_func=build_in_mmloss_scope,
    locations=['mmloss.losses'])
