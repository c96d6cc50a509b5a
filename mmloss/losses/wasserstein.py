"""Normalized Gaussian Wasserstein Distance (NWD) loss for tiny objects.

A box ``(cx, cy, w, h)`` is read as the 2-D Gaussian
``N((cx, cy), diag(w**2 / 4, h**2 / 4))``. Between two such Gaussians the
squared 2-Wasserstein distance has the closed form

``W2**2 = ||(cx_p, cy_p, w_p/2, h_p/2) - (cx_t, cy_t, w_t/2, h_t/2)||**2``

and ``NWD = exp(-sqrt(W2**2) / C)`` with a dataset constant ``C`` (12.8 on
AI-TOD in the paper). Unlike IoU it stays informative for boxes that do
not overlap and is smooth in position and scale, which suits objects of a
few pixels. Wang et al., "A Normalized Gaussian Wasserstein Distance for
Tiny Object Detection", 2021, arXiv:2110.13389.
"""
from typing import Optional, Union

import torch
from torch import Tensor

from .. import geometry as geo
from ..checks import check_positive
from ..engine import dispatch
from ..precision import upcast
from ..registry import MODELS
from .iou import IoUFamilyLoss
from .iou.functions import checked_call, guarded_reduction

__all__ = ['gaussian_wasserstein_sq', 'nwd_loss', 'NWDLoss']


def gaussian_wasserstein_sq(pred: Tensor, target: Tensor) -> Tensor:
    """Squared 2-Wasserstein distance of the boxes' Gaussians, shape (...).

    ``W2**2 = rho**2 + ((w_p - w_t)**2 + (h_p - h_t)**2) / 4`` with ``rho``
    the centre distance.
    """
    size = (geo.box_wh(pred) - geo.box_wh(target))**2
    return geo.centre_distance_sq(pred, target) + size.sum(-1) / 4


def nwd_loss(pred: Tensor, target: Tensor, weight: Optional[Tensor] = None,
             reduction: str = 'mean',
             avg_factor: Optional[Union[float, Tensor]] = None, *,
             constant: float = 12.8, eps: float = 1e-7) -> Tensor:
    """NWD loss ``1 - exp(-sqrt(W2**2 + eps) / C)``.

    ``eps`` keeps the square root differentiable at ``W2 = 0`` (identical
    boxes), where the loss is ``1 - exp(-sqrt(eps) / C)``, about 2.5e-5.

    Args:
        pred, target (Tensor): boxes (..., 4).
        weight (Tensor, optional): per-box weight, broadcast to (...).
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        avg_factor (float | Tensor, optional): denominator of the mean.
        constant (float): the normaliser ``C`` (> 0), roughly the average
            absolute object size of the dataset.
        eps (float): stabiliser under the square root (> 0: at 0 the
            gradient of a perfect match is NaN).

    Returns:
        Tensor: the element-wise loss (...) for ``'none'``, else a scalar,
        in ``pred``'s dtype (half boxes compute in float32).
    """
    reduce = checked_call('NWDLoss', pred, target, weight, reduction,
                          avg_factor)
    # sqrt's derivative at 0 is Inf: eps = 0 gives NaN gradients at a match
    check_positive('NWDLoss', 'eps', eps)
    with dispatch.autocast_off(pred):
        p, t = upcast(pred, target)
        distance = (gaussian_wasserstein_sq(p, t) + eps).sqrt()
        # -expm1(-x) = 1 - exp(-x), without the cancellation for close boxes
        loss = -torch.expm1(-distance / constant)
        return guarded_reduction(reduce, loss, p, t, pred)


@MODELS.register_module()
class NWDLoss(IoUFamilyLoss):
    """NWD loss (see :func:`nwd_loss`).

    Args:
        constant (float): dataset constant ``C`` (paper: 12.8 for AI-TOD).
        eps (float): stabiliser under the square root (> 0).
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): factor on the loss.

    Forward takes MMDetection's ``(pred, target, weight=None,
    avg_factor=None, reduction_override=None)``; a (n, 4) weight is
    averaged over the last dimension.

    Paper: Wang et al., "A Normalized Gaussian Wasserstein Distance for Tiny Object Detection", 2021, https://arxiv.org/abs/2110.13389
    """

    loss_function = staticmethod(nwd_loss)

    def __init__(self, constant: float = 12.8, eps: float = 1e-7,
                 reduction: str = 'mean', loss_weight: float = 1.0):
        super().__init__(eps=eps, reduction=reduction,
                         loss_weight=loss_weight)
        # > 0, unlike the other IoU-family eps (see nwd_loss)
        self.eps = check_positive(self.loss_name, 'eps', eps)
        self.constant = check_positive(self.loss_name, 'constant', constant)

    def loss_kwargs(self) -> dict:
        return dict(constant=self.constant, eps=self.eps)
