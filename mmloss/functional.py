"""The pure loss functions of every family, like ``torch.nn.functional``.

Tensors in, tensors out: no registry, no config, no mmdet. Each family module
under :mod:`mmloss.losses` lists its public names in ``__all__``; the plain
functions among them are re-exported here, e.g.
``mmloss.functional.giou_loss(pred, target)``.
"""
import inspect as _inspect

from .losses import FAMILIES as _FAMILIES

__all__ = [
    _name for _family in _FAMILIES for _name in _family.__all__
    if _inspect.isfunction(getattr(_family, _name))
]
globals().update({
    _name: getattr(_family, _name)
    for _family in _FAMILIES for _name in _family.__all__
    if _name in __all__
})
