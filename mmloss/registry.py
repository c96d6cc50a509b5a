"""The mmloss model registry.

``MODELS`` is a child of MMEngine's root ``MODELS`` with scope ``'mmloss'``.
MMDetection's registry is a sibling under the same root, so an mmdet config
resolves ``type='mmloss.FocalLoss'`` by walking up to the root and down into
this scope: MMEngine imports ``mmloss.registry`` for the scope on first use,
and ``locations`` then imports every loss module. Nothing is ever registered
into mmdet's registry, so ``type='FocalLoss'`` stays mmdet's own.
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry, build_model_from_cfg


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


MODELS = Registry(
    'model',
    parent=MMENGINE_MODELS,
    scope='mmloss',
    build_func=build_in_mmloss_scope,
    locations=['mmloss.losses'])
