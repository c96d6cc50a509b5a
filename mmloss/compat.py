"""mmdet-class compatibility: twins that pass MMDetection's ``isinstance``.

A few MMDetection 3.3 heads check the *class* of their loss, not only its
attributes: ``DynamicRoIHead`` asserts
``isinstance(bbox_head.loss_bbox, SmoothL1Loss)`` and ``DETRHead``,
``DINOHead`` and ``GroundingDINOHead`` pick their quality-focal branch with
``isinstance(self.loss_cls, QualityFocalLoss)``, against mmdet's own
classes. An mmloss twin is a different class, so those heads would refuse it
or take the wrong branch.

:func:`mmdet_compatible` answers with a *twin class*: for a registered
mmloss loss ``X`` whose name is a loss of MMDetection 3.3, and only while
``mmdet.models.losses`` is imported, the class::

    class X(mmloss.X, mmdet.models.losses.X)   # MRO: mmloss's chain first

with ``__name__``, ``__qualname__``, ``__module__`` and ``__doc__`` of
``mmloss.X``. mmloss's ``__init__`` and ``forward`` (and every other
attribute) win in the MRO; :class:`~mmloss.losses.base.BaseLoss` starts the
module with ``nn.Module.__init__`` directly, so mmdet's ``__init__`` never
runs and leaves no attribute, buffer or ``state_dict`` entry behind. A name
only mmdet's class defines is hidden (reads raise ``AttributeError``), and a
name mmdet's chain defines that mmloss takes from ``nn.Module`` (mmengine's
``BaseModule.__repr__`` under the tracking losses) is restored to mmloss's,
so a twin-class instance resolves every name exactly as the mmloss instance
does, plus ``isinstance(obj, mmdet.models.losses.X)``.

:class:`~mmloss.registry.MODELS` hands out twin classes from ``get`` (and so
from ``build``, and from mmdet's registry resolving ``'mmloss.X'``); a loss
built while mmdet's losses are not imported is the plain mmloss class, and
``import mmloss`` never imports mmdet or mmcv. Twin classes are cached, one
per mmloss class. An instance pickles and deep-copies by its mmloss class
(see :func:`new_twin_instance`): unpickled where mmdet's losses are loaded it
is a twin-class instance again, elsewhere a plain mmloss one.

Why it is sound: the only thing mmdet's class contributes is the answer of
``isinstance``; each place in MMDetection 3.3 that relies on that answer
then reads attributes the twin has with mmdet's meaning (the catalogue's
contract: same names, arguments, defaults, forward signatures; ``tests/
test_compat.py`` checks every name of mmdet's classes resolves as on
mmloss's). The places (grep ``isinstance(... loss``, ``loss_*.<attr>`` and
``getattr(self.loss_*`` outside ``models/losses``):

* class checks: ``roi_heads/dynamic_roi_head.py`` (assert ``SmoothL1Loss``;
  reads and sets ``loss_bbox.beta``, which mmloss reads at every call);
  ``dense_heads/detr_head.py``, ``dino_head.py`` (``QualityFocalLoss``: the
  loss gets ``(labels, iou scores)``), ``grounding_dino_head.py``
  (``QualityFocalLoss``: raises ``NotImplementedError``, as with mmdet's);
* ``loss_cls.use_sigmoid``: DETR, conditional/DAB/deformable DETR heads,
  ``sparse_roi_head.py``, ``dii_head.py``;
* ``custom_cls_channels`` / ``custom_activation`` / ``custom_accuracy``
  (``getattr(..., False)``) and ``get_cls_channels`` / ``get_activation`` /
  ``get_accuracy``: ``base_dense_head.py``, ``fcos_head.py``,
  ``bbox_head.py``, ``convfc_bbox_head.py``, ``multi_instance_bbox_head.py``,
  ``cascade_roi_head.py``, ``roi_embed_head.py`` (``loss_match``);
* ``loss_bbox.loss_weight``: ``centernet_update_head.py``;
* config-level, not the module: ``loss_cls.get('use_sigmoid')`` (anchor,
  VFNet, RepPoints, SABL, guided-anchor heads), DETR's ``class_weight`` /
  ``bg_cls_weight``, MaskFormer's ``loss_cls.class_weight``, and
  ``guided_anchor_head.py``'s ``loss_loc['type'] in ['FocalLoss']``, whose
  flag (``loc_focal_loss``) MMDetection 3.3 never reads.
"""
import sys
from typing import Dict, Optional, Tuple

from torch import nn

#: The module whose classes MMDetection's heads check against.
MMDET_LOSSES = 'mmdet.models.losses'

# Names a class defines that are not behaviour (never hidden, never copied).
_CLASS_BOOKKEEPING = frozenset({
    '__module__', '__qualname__', '__doc__', '__dict__', '__weakref__',
    '__annotations__', '__init_subclass__', '__parameters__',
    '__orig_bases__', '_abc_impl', '__abstractmethods__', '__slotnames__'})

# mmloss class -> its twin class
_TWIN_CLASSES: Dict[type, type] = {}


class _HiddenMMDetAttribute:
    """A name only mmdet's class defines: hidden on a twin-class instance,
    so ``getattr(loss, name, default)`` gives what it gives on mmloss's."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        owner_name = (owner or type(obj)).__name__
        raise AttributeError(
            f'{owner_name}: {self.name!r} is mmdet\'s, not part of the mmloss '
            'loss')


def mmdet_twin_of(cls: type) -> Optional[type]:
    """MMDetection's loss class of the same name as the mmloss loss ``cls``,
    or ``None``: when ``cls`` is not the class the mmloss registry holds under
    its name, when it is not a loss of MMDetection 3.3 (see
    :data:`mmloss.catalogue.MMDET_LOSS_NAMES`), or when
    ``mmdet.models.losses`` is not imported (never imported here)."""
    losses = sys.modules.get(MMDET_LOSSES)
    if losses is None or not isinstance(cls, type):
        return None
    from .catalogue import MMDET_LOSS_NAMES
    from .registry import MODELS
    name = cls.__name__
    if name not in MMDET_LOSS_NAMES or MODELS.module_dict.get(name) is not cls:
        return None
    theirs = getattr(losses, name, None)
    if not (isinstance(theirs, type) and issubclass(theirs, nn.Module)):
        return None  # mmdet's package still importing, or not a module
    return theirs


def mmloss_class(obj) -> type:
    """The mmloss class of a loss instance or class: the first base of a
    twin class, the class itself otherwise."""
    cls = obj if isinstance(obj, type) else type(obj)
    return cls.__dict__.get('_mmloss_class', cls)


def is_twin_class(cls: type) -> bool:
    """Whether ``cls`` is a twin class made by :func:`mmdet_compatible`."""
    return isinstance(cls, type) and '_mmloss_class' in cls.__dict__


def mmdet_compatible(cls: type) -> type:
    """The twin class of the mmloss loss ``cls`` (cached), or ``cls``
    itself where :func:`mmdet_twin_of` gives ``None``."""
    twin = _TWIN_CLASSES.get(cls)
    if twin is not None:
        return twin
    theirs = mmdet_twin_of(cls)
    if theirs is None or issubclass(cls, theirs):
        return cls
    twin = _make_twin_class(cls, theirs)
    _TWIN_CLASSES[cls] = twin
    return twin


def _mmdet_chain_names(theirs: type):
    """Names defined by mmdet's class ``theirs`` and its bases before
    ``nn.Module`` (mmengine's ``BaseModule`` for the tracking losses)."""
    names = set()
    for base in theirs.__mro__:
        if base is nn.Module or issubclass(nn.Module, base):
            break
        names.update(vars(base))
    return names - _CLASS_BOOKKEEPING


def mmdet_only_names(cls: type, theirs: type) -> Tuple[str, ...]:
    """Names mmdet's class ``theirs`` (or its mmdet bases) defines that the
    mmloss class ``cls`` does not have: hidden on the twin class."""
    return tuple(sorted(n for n in _mmdet_chain_names(theirs)
                        if not hasattr(cls, n)))


def _twin_namespace(cls: type, theirs: type) -> dict:
    """What the twin class itself defines so that every name resolves as it
    does on ``cls``: mmdet's chain sits between mmloss's classes and
    ``nn.Module``, so a name mmdet's chain defines and ``cls`` takes from
    ``nn.Module`` (``BaseModule.__repr__``) is restored from ``cls``'s
    MRO, and a name ``cls`` lacks (``init_weights``) is hidden."""
    namespace = {}
    ours_only = [c for c in cls.__mro__ if c not in theirs.__mro__]
    for name in _mmdet_chain_names(theirs):
        owner = next((c for c in cls.__mro__ if name in vars(c)), None)
        if owner is None:
            namespace[name] = _HiddenMMDetAttribute()
        elif owner not in ours_only:
            namespace[name] = vars(owner)[name]
    return namespace


def _make_twin_class(cls: type, theirs: type) -> type:
    namespace = _twin_namespace(cls, theirs)
    namespace.update({
        '__module__': cls.__module__,
        '__qualname__': cls.__qualname__,
        '__doc__': cls.__doc__,
        '__reduce_ex__': _reduce_ex,
        '_mmloss_class': cls,
    })
    twin = type(cls.__name__, (cls, theirs), namespace)
    # mmloss's whole chain, BaseLoss included, precedes mmdet's class, so
    # mmloss's __init__/forward/attributes win and BaseLoss (which starts the
    # module with nn.Module.__init__) is the last __init__ that runs.
    mro = twin.__mro__
    ours = [c for c in cls.__mro__ if c not in theirs.__mro__]
    if list(mro[1:1 + len(ours)]) != ours:  # pragma: no cover
        raise TypeError(f'{cls.__name__}: mmloss class chain does not '
                        f'precede mmdet\'s in the twin class MRO {mro}')
    return twin


def new_twin_instance(cls: type):
    """An uninitialised instance of the mmloss class ``cls``'s twin class
    where mmdet's losses are imported, of ``cls`` elsewhere (the
    constructor pickles and deep copies of twin-class instances use)."""
    target = mmdet_compatible(cls)
    return target.__new__(target)


def _reduce_ex(self, protocol):
    # object's reduction names the class itself, which pickle cannot find
    # by name (the module attribute is the plain mmloss class): name the
    # mmloss class instead and rebuild through new_twin_instance.
    reduced = object.__reduce_ex__(self, max(protocol, 2))
    return (new_twin_instance, (mmloss_class(self),)) + tuple(reduced[2:])
