"""The engine behind every fast path (see ``docs``/DESIGN "The engine").

* :mod:`.dispatch`: which path a call runs (plain formula or fast path),
  the per-device tuning table and the global switch :func:`fast_paths`;
* :mod:`.functions`: the autograd Functions that run the families'
  kernels (gradient kept from forward, recomputed in backward, or built
  from a tensor forward kept), each exact under double backward;
* :mod:`.rowwise`: the per-row Jacobian engine of the box losses.
"""
from .dispatch import (COMPILE_ENV, FAST_PATHS_ENV, PATHS, TUNING, Tuning,
                       autocast_off, block_rows, compile_enabled,
                       cpu_kernels, device_kind, fast_paths,
                       fast_paths_enabled, pretend_device, tuning, use_fast)
from .functions import (FromOutput, GradientFromOutput, GradientInBackward,
                        GradientInForward, IncomingGradient, NegativeOf,
                        gradient_from_output, gradient_in_backward,
                        gradient_in_forward)

__all__ = [
    'COMPILE_ENV', 'FAST_PATHS_ENV', 'PATHS', 'TUNING', 'Tuning',
    'autocast_off', 'block_rows', 'compile_enabled', 'cpu_kernels',
    'device_kind', 'fast_paths', 'fast_paths_enabled', 'pretend_device',
    'tuning', 'use_fast', 'FromOutput', 'GradientFromOutput',
    'GradientInBackward', 'GradientInForward', 'IncomingGradient',
    'NegativeOf',
    'gradient_from_output', 'gradient_in_backward', 'gradient_in_forward'
]
