"""The IoU family of box-regression losses.

Boxes are ``(x1, y1, x2, y2)``, shape ``(..., 4)``; ``pred[i]`` is compared
with ``target[i]``. Every loss is built from :mod:`mmloss.geometry`:

* MMDetection 3.3 twins (same names, arguments, defaults and values):
  :func:`iou_loss`, :func:`giou_loss`, :func:`diou_loss`, :func:`ciou_loss`,
  :func:`eiou_loss`, :func:`siou_loss`, :func:`bounded_iou_loss` and the
  modules ``IoULoss``, ``GIoULoss``, ``DIoULoss``, ``CIoULoss``, ``EIoULoss``,
  ``SIoULoss``, ``BoundedIoULoss``.
* Newer losses: Alpha-IoU, Wise-IoU (v1/v2/v3), MPDIoU, Focal-EIoU, and the
  Inner-IoU / Focaler-IoU modifiers that apply to every IoU variant.

One job per module:

* :mod:`.formulas`: the plain formulas (metrics and losses in autograd
  ops), the reference of every path;
* :mod:`.cores`: the fast-path cores, each loss with its hand-derived
  per-box Jacobian, run by the row-wise engine
  (:mod:`mmloss.engine.rowwise`);
* :mod:`.functions`: the public pure functions (entry checks, path
  decision through :mod:`mmloss.engine.dispatch`, reduction);
* :mod:`.modules`: the registered ``nn.Module`` twins.

Fast paths: each element of IoU, GIoU, DIoU, CIoU, SIoU and EIoU depends on
one box pair only, so the forward pass computes the (N, 4) Jacobian next to
the loss and saves just that (with references to the inputs, for an exact
double backward through the plain formula), where autograd keeps a dozen or
more per-box temporaries. With ``reduction='mean'`` or ``'sum'`` and a
constant weight of the loss's shape, the weighted Jacobian goes straight
into the gradient and backward is one scaling. Bounded IoU, whose loss is
per coordinate, has a diagonal Jacobian in centre/size coordinates and runs
through the same engine. ``fast=False`` (or :func:`mmloss.fast_paths`)
selects the plain autograd formula; the tests check that both agree, in
values, gradients and second derivatives.

Deliberate differences from MMDetection (all where mmdet gives NaN/Inf or
has no defined result):

* CIoU of identical boxes: mmdet's trade-off weight ``v / (1 - IoU + v)`` is
  ``0/0``; here it is 0 (the aspect term vanishes), so the loss is finite.
* Half/bfloat16 boxes are computed in float32 and cast back, so areas of
  boxes a few hundred pixels wide no longer overflow to Inf. Under
  ``torch.autocast`` the losses compute as outside it (float32 at least).
* SIoU of two zero-width (or zero-height) boxes: mmdet's shape term is
  ``0/0``; here it is 0 (equal widths).
* Every finite box pair gives a finite loss and finite gradients, also
  inverted, thin and zero-area boxes. SIoU's exponentials overflow there in
  mmdet (loss 0 with NaN gradients, or a NaN loss); here their exponents
  are capped well below overflow, which leaves every value mmdet computes
  finitely as it is (see :data:`.formulas.SIOU_EXPONENT_CAP`). Wise-IoU
  bounds its detached attention and outlier degree to their ranges for
  boxes.
* The mean of an empty input is 0 (connected to the graph), not NaN.
* All-zero weights: mmdet returns ``(pred * weight).sum()`` after checking
  ``any(weight > 0)`` on the host; here the ordinary weighted reduction
  gives the same zero (and zero gradient) without a host sync. With
  ``reduction='none'`` the result therefore keeps its element-wise shape
  (mmdet returns a scalar 0 there for every loss but ``IoULoss``).
  Negative weights (meaningless for a loss) are not special-cased.
* Extensions where mmdet raises or misbehaves: boxes with leading
  dimensions (..., 4); ``BoundedIoULoss`` also takes per-box weights (n,),
  broadcast over the four coordinates (mmdet needs (n, 4)); unexpected
  keyword arguments raise ``TypeError``; asserts are ``ValueError``s
  that are also ``AssertionError``s (:mod:`mmloss.errors`).
* Gradients where mmdet's are NaN/Inf at a degenerate point (e.g. SIoU with
  a zero-size enclosing box and no centre offset) are 0 in the fast paths.
* Non-finite input stays non-finite: an Inf or NaN coordinate gives NaN
  for its box's loss (its row with ``reduction='none'``, and so any mean or
  sum over it, whatever the weight), so ``MMLOSS_CHECK_FINITE`` catches it.
  An Inf alone could be hidden by the formula (``I / Inf = 0``, a clamp, a
  max); :func:`mmloss.geometry.nonfinite_rows` is added to every loss for
  that (per row for ``'none'``, its total to a mean or sum). NaN is never
  masked.
* The modules warn once (``UserWarning``, on their first call with rows)
  when most rows of ``pred`` or ``target`` are not boxes (``x2 < x1`` or
  ``y2 < y1``): a head that passes encoded deltas needs
  ``reg_decoded_bbox=True``.
* Wise-IoU's running mean of ``1 - IoU`` counts only the finite rows of
  positive weight (the negatives of an anchor head come with weight 0).
"""
from . import cores, formulas, functions, modules  # noqa: F401
from .functions import *  # noqa: F401,F403
from .modules import *  # noqa: F401,F403
from .modules import IoUFamilyLoss  # noqa: F401 (a base for other families)

__all__ = [
    # metrics (similarities, plain autograd)
    'iou_terms', 'focaler_iou',
    # mmdet twins
    'iou_loss', 'giou_loss', 'diou_loss', 'ciou_loss', 'eiou_loss',
    'siou_loss', 'bounded_iou_loss',
    # beyond mmdet
    'variant_iou_loss', 'alpha_iou_loss', 'wise_iou_loss', 'mpdiou_loss',
    'focal_eiou_loss',
    # modules
    'IoULoss', 'GIoULoss', 'DIoULoss', 'CIoULoss', 'EIoULoss', 'SIoULoss',
    'BoundedIoULoss', 'VariantIoULoss', 'AlphaIoULoss', 'WiseIoULoss',
    'MPDIoULoss', 'FocalEIoULoss'
]

# The public names live here (the family module the catalogue, the docs and
# pickles know them by), whichever file of the package defines them.
for _name in __all__ + ['IoUFamilyLoss']:
    globals()[_name].__module__ = __name__
del _name
