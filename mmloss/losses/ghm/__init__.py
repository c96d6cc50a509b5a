"""Gradient Harmonizing Mechanism losses: GHM-C and GHM-R.

Li, Liu and Wang, *Gradient Harmonized Single-stage Detector*, AAAI 2019,
https://arxiv.org/abs/1811.05181.

Both losses weight every valid element by the inverse density of its
*gradient norm* ``g``. The unit interval is cut into ``bins`` regions with
MMDetection's edges ``e_i = float32(i / bins)`` (the last edge lifted to
``1 + 1e-6`` for GHM-C and ``1e3`` for GHM-R); with ``c_b`` the number of
valid elements whose ``g`` falls in region ``b``, ``n`` the number of
non-empty regions and ``tot`` the normaliser below::

    w = tot / (n * c_b)                         (momentum = 0)
    A_b <- m * A_b + (1 - m) * c_b   (non-empty b only)
    w = tot / (n * A_b)                         (momentum m > 0)

Invalid elements (``label_weight <= 0``) get ``w = 0``; elements with a
NaN/Inf input get ``w = NaN`` and are counted nowhere (see below). The
weights carry no gradient. The loss is ``sum(w * L) / tot`` for
``'mean'``, ``sum(w * L)`` for ``'sum'`` and ``w * L`` for ``'none'``,
where

* GHM-C: ``L = BCE(x, t)``, ``g = |sigmoid(x) - t|`` and ``tot`` is the
  number of valid elements (at least 1);
* GHM-R: ``L = sqrt(d^2 + mu^2) - mu`` (authentic smooth L1) of
  ``d = pred - target``, ``g = |d| / sqrt(d^2 + mu^2)`` and ``tot`` is the
  sum of ``label_weight`` (at least 1).

The moving averages ``A`` live in the module's ``acc_sum`` buffer (present
when ``momentum > 0``, as in MMDetection, so checkpoints of either library
load into the other and a resumed run continues the same statistics).

Shapes: GHM-C takes logits ``(N, C)`` with integer labels ``(N,)`` and a
``label_weight`` ``(N,)``, or logits, target and ``label_weight`` of one
shape; GHM-R takes ``pred``, ``target`` and ``label_weight`` of one shape
(``(N, 4)`` deltas). The loss is element-wise for ``'none'``, else a
scalar.

MMDetection loops over the bins in Python with a host sync per bin. Here a
bin index is computed for every element in a few vectorised passes (exactly
MMDetection's bin, see :func:`gradient_bin_index`), the counts come from
one ``bincount`` and ``n`` stays a tensor: nothing syncs with the device.
Two executions of the same maths, chosen per call by
:mod:`mmloss.engine.dispatch`: the plain formula (the weights under
``no_grad``, the loss by autograd) and a kernel that computes the value and
``d loss / d pred`` together through
:class:`~mmloss.engine.functions.GradientInForward`, which keeps that one
tensor for backward instead of the target, the weights and the autograd
intermediates. A backward with ``create_graph=True`` differentiates the
plain formula with the same weights (the running state moves once per
call), so second derivatives are exact with the weights held constant.

Deliberate differences from MMDetection 3.3:

* ``reduction='sum'`` returns ``sum(w * L)``; MMDetection raises because it
  always passes its normaliser as ``avg_factor``. ``'sum'`` with an
  ``avg_factor`` (which both ignore otherwise) raises here too, the
  ``ValueError`` of every mmloss loss.
* GHM-C with integer labels: labels must lie in ``[0, num_classes]``
  (``num_classes`` is background); MMDetection silently treats any other
  value as background. The check reads the labels on the CPU and is queued
  with ``torch._assert_async`` on an accelerator (no sync).
* Half-precision inputs are computed in float32 (MMDetection's GHM-C fails
  on half logits); the loss of ``'none'`` is returned in the input dtype,
  a reduced one in float32 (a mean that float32 holds is never ``inf``).
  The module's ``edges`` and ``acc_sum`` stay float32 after ``.half()``
  (moving counts of a large batch pass float16's 65504).
* A NaN or Inf input makes the loss non-finite, as in MMDetection (never
  masked: its element gets a NaN weight), but the element is counted in no
  bin (MMDetection counts NaN/Inf elements, and GHM-C's infinite logits, in
  a bin) and a call with any non-finite element leaves ``acc_sum`` as it
  was: one diverged batch does not carry into the later steps.
* Integer labels of any integer dtype are accepted (compared as int64).

One job per module:

* :mod:`.histogram`: the bin edges, the bin of every gradient norm and the
  harmonizing weights (with the moving counts);
* :mod:`.functions`: GHM-C and GHM-R (public functions, plain formulas,
  kernels, the path decision through :mod:`mmloss.engine.dispatch`);
* :mod:`.modules`: the registered ``nn.Module`` twins.
"""
from . import functions, histogram, modules  # noqa: F401
from .functions import ghmc_loss, ghmr_loss  # noqa: F401
from .histogram import (GHMC_TOP_EDGE_PAD, GHMR_TOP_EDGE,  # noqa: F401
                        ghm_edges, gradient_bin_index, harmonized_bin_weights)
from .modules import GHMC, GHMR  # noqa: F401

__all__ = [
    'ghm_edges', 'gradient_bin_index', 'harmonized_bin_weights',
    'ghmc_loss', 'ghmr_loss', 'GHMC', 'GHMR'
]

# The public names live here (the family module the catalogue, the docs and
# pickles know them by), whichever file of the package defines them.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
