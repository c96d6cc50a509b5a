"""Quality-aware classification losses: Varifocal, Quality Focal, DFL.

* Varifocal loss (Zhang et al., "VarifocalNet: An IoU-aware Dense Object
  Detector", CVPR 2021, https://arxiv.org/abs/2008.13367), for logits ``x``,
  ``p = sigmoid(x)`` and an IoU-aware target ``q`` of the same shape::

      VFL = q * BCE(x, q)                         if q > 0   (iou_weighted)
            BCE(x, q)                             if q > 0   (otherwise)
            alpha * |p - q| ** gamma * BCE(x, q)  if q <= 0

* Quality focal loss and distribution focal loss (Li et al., "Generalized
  Focal Loss", NeurIPS 2020, https://arxiv.org/abs/2006.04388). QFL with a
  quality score ``y`` at each row's label and 0 elsewhere, summed over the
  classes of a row::

      QFL = |y - p| ** beta * BCE(x, y)

  DFL of a continuous target ``y`` between the integers ``l <= y < l + 1``
  over the softmax distribution ``S`` of a row::

      DFL = -((l + 1 - y) * log S_l + (y - l) * log S_(l+1))

Shapes: VFL logits and targets (N, C) (any shape); QFL logits (N, C) with
``(labels (N,), scores (N,))`` or a soft target (N, C); DFL logits
(N, n + 1) with distances (N,) in ``[0, n]``.

The label form of QFL never builds an ``N x C`` target: the background
formula ``p ** beta * softplus(x)`` is summed per row and each foreground
row's label entry is corrected. VFL, the logit label form of QFL and DFL
compute their gradient analytically in the forward pass
(:class:`mmloss.engine.functions.GradientInForward`: the gradient is saved;
a backward with ``create_graph=True`` differentiates the plain formula, so
second derivatives are exact). Where the CPU kernels may run
(:func:`mmloss.engine.dispatch.cpu_kernels`), VFL runs the focal kernel over
every entry (a zero target is a focal negative) and recomputes only the
non-zero targets. The probability (``activated``) and soft-target forms of
QFL, and targets that need a gradient, take the plain formula.

One job per module:

* :mod:`.common`: what the three losses share (the check of ``pred``,
  the compute dtype and reduction rule of a call);
* :mod:`.varifocal`: VFL (public function, plain formula, kernels);
* :mod:`.quality_focal`: QFL (public function, label and soft-target
  formulas, kernel of the label form);
* :mod:`.distribution`: DFL (public function, plain formula, kernel);
* :mod:`.modules`: the registered ``nn.Module`` twins.
"""
from . import common, distribution, modules, quality_focal  # noqa: F401
from . import varifocal  # noqa: F401
from .distribution import (distribution_focal_kernel,  # noqa: F401
                           distribution_focal_loss, distribution_focal_rows)
from .modules import (DistributionFocalLoss, QualityFocalLoss,  # noqa: F401
                      VarifocalLoss)
from .quality_focal import (quality_focal_kernel,  # noqa: F401
                            quality_focal_loss, quality_focal_loss_labels,
                            quality_focal_loss_soft)
from .varifocal import (_varifocal_mostly_zero,  # noqa: F401
                        varifocal_elementwise, varifocal_kernel,
                        varifocal_loss)

__all__ = [
    'varifocal_loss', 'quality_focal_loss', 'distribution_focal_loss',
    'VarifocalLoss', 'QualityFocalLoss', 'DistributionFocalLoss'
]

# The public names live here (the family module the catalogue, the docs and
# pickles know them by), whichever file of the package defines them.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
