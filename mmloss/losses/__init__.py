"""Every loss family; importing this package registers every loss.

One module per family. Each lists its public pure functions and registered
modules in ``__all__``.
"""
from . import (cross_entropy, ddq, dice, embedding, eqlv2, focal,
               focal_custom, gaussian_focal, ghm, iou, kd, pisa, quality,
               regression, seesaw, tracking, wasserstein)
from .base import BaseLoss
from .cross_entropy import *  # noqa: F401,F403
from .ddq import *  # noqa: F401,F403
from .dice import *  # noqa: F401,F403
from .embedding import *  # noqa: F401,F403
from .eqlv2 import *  # noqa: F401,F403
from .focal import *  # noqa: F401,F403
from .focal_custom import *  # noqa: F401,F403
from .gaussian_focal import *  # noqa: F401,F403
from .ghm import *  # noqa: F401,F403
from .iou import *  # noqa: F401,F403
from .kd import *  # noqa: F401,F403
from .pisa import *  # noqa: F401,F403
from .quality import *  # noqa: F401,F403
from .regression import *  # noqa: F401,F403
from .seesaw import *  # noqa: F401,F403
from .tracking import *  # noqa: F401,F403
from .wasserstein import *  # noqa: F401,F403

FAMILIES = (cross_entropy, ddq, dice, embedding, eqlv2, focal,
            focal_custom, gaussian_focal, ghm, iou, kd, pisa, quality,
            regression, seesaw, tracking, wasserstein)

__all__ = ['BaseLoss', 'FAMILIES'] + [
    name for family in FAMILIES for name in family.__all__]
