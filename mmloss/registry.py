"""The mmloss model registry.

``MODELS`` is a child of MMEngine's root ``MODELS`` with scope ``'mmloss'``.
MMDetection's registry is a sibling under the same root, so an mmdet config
resolves ``type='mmloss.FocalLoss'`` by walking up to the root and down into
this scope: MMEngine imports ``mmloss.registry`` for the scope on first use,
and ``locations`` then imports every loss module. Nothing is ever registered
into mmdet's registry, so ``type='FocalLoss'`` stays mmdet's own.
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry(
    'model',
    parent=MMENGINE_MODELS,
    scope='mmloss',
    locations=['mmloss.losses'])
