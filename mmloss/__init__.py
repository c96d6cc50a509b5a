"""mmloss: object-detection losses for MMDetection configs.

``import mmloss`` registers every loss in the ``mmloss`` registry scope, so an
mmdet config selects one by ``type='mmloss.<Name>'``. The core needs only
torch and mmengine.
"""
from . import functional, losses
from .losses import *  # noqa: F401,F403
from .checks import set_check_finite
from .engine import fast_paths, fast_paths_enabled
from .errors import (LossNotImplementedError, LossTypeError, LossValueError,
                     LossZeroDivisionError)
from .reduction import reduce_loss, weight_reduce_loss, weighted_loss
from .registry import MODELS
from .version import __version__

__all__ = ['LossNotImplementedError', 'LossTypeError', 'LossValueError',
           'LossZeroDivisionError', 'MODELS', '__version__', 'fast_paths',
           'fast_paths_enabled', 'functional', 'losses', 'reduce_loss',
           'set_check_finite', 'weight_reduce_loss', 'weighted_loss'
           ] + losses.__all__
