"""The GHM family's registered modules (``mmloss.GHMC``, ``mmloss.GHMR``):
the bin settings and the moving counts (``acc_sum``) as MMDetection's
buffers, and MMDetection's forward arguments."""
from typing import Optional

import torch
from torch import Tensor

from ...checks import check_avg_factor, check_in_range, check_positive
from ...errors import LossNotImplementedError
from ...registry import MODELS
from ..base import BaseLoss
from .functions import _check_ghmc_inputs, _check_ghmr_inputs, _ghmc, _ghmr
from .histogram import (GHMC_TOP_EDGE_PAD, GHMR_TOP_EDGE, _check_bins,
                        ghm_edges)

__all__ = ['GHMC', 'GHMR']


class _HarmonizedLoss(BaseLoss):
    """The state shared by GHM-C and GHM-R: edges and moving counts.

    The buffers stay float32 whatever ``.half()``, ``.to(dtype)`` or a
    checkpoint do to the module: moving counts of a large batch pass
    float16's 65504, and the edges must stay MMDetection's float32 values.
    """

    top_edge: float
    #: buffers kept in float32 (a floating dtype other than float32 is
    #: undone by :meth:`_apply` and on loading)
    _STATE_BUFFERS = ('edges', 'acc_sum')

    def __init__(self, bins: int, momentum: float, loss_weight: float,
                 reduction: str):
        super().__init__(reduction=reduction, loss_weight=loss_weight)
        self.bins = _check_bins(self.loss_name, bins)
        self.momentum = float(check_in_range(self.loss_name, 'momentum',
                                             momentum, 0.0, 1.0))
        # The same buffers (names, shapes, presence) as MMDetection's, so a
        # checkpoint of either loads strictly into the other. `edges` is
        # informational: the bins are recomputed from `bins`.
        self.register_buffer('edges', ghm_edges(self.bins, self.top_edge))
        if self.momentum > 0:
            self.register_buffer('acc_sum', torch.zeros(self.bins))
        else:
            self.acc_sum = None

    def extra_repr(self) -> str:
        return (f'bins={self.bins}, momentum={self.momentum}, '
                + super().extra_repr())

    def _apply(self, fn, recurse=True):
        """``nn.Module._apply``, then the state buffers back in float32:
        converted from their float32 value before ``fn`` (not from what
        ``fn`` made of it), on the device ``fn`` chose."""
        before = {name: self._buffers[name] for name in self._STATE_BUFFERS
                  if self._buffers.get(name) is not None}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers[name]
            if new is not None and new.dtype != torch.float32:
                self._buffers[name] = old.to(device=new.device,
                                             dtype=torch.float32)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a float16 or float64 checkpoint (or load_state_dict(assign=True))
        # must not change the dtype of the state
        for name in self._STATE_BUFFERS:
            value = state_dict.get(prefix + name)
            if isinstance(value, Tensor) and value.is_floating_point():
                state_dict[prefix + name] = value.float()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@MODELS.register_module()
class GHMC(_HarmonizedLoss):
    """GHM-C loss (MMDetection 3.3's twin); see :func:`ghmc_loss`.

    Paper: Li et al., "Gradient Harmonized Single-stage Detector", AAAI 2019, https://arxiv.org/abs/1811.05181

    Args:
        bins (int): number of gradient-norm bins (>= 1).
        momentum (float): moving-average factor of the bin counts, in
            ``[0, 1)``; 0 uses the counts of each call.
        use_sigmoid (bool): must be True (GHM-C is a sigmoid BCE loss).
        loss_weight (float): factor applied to the loss.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
    """

    top_edge = 1.0 + GHMC_TOP_EDGE_PAD
    #: the only form (checked at construction)
    use_sigmoid = True

    def __init__(self,
                 bins=10,
                 momentum=0,
                 use_sigmoid=True,
                 loss_weight=1.0,
                 reduction='mean'):
        if use_sigmoid is not True:
            # NotImplementedError at construction, as MMDetection's
            raise LossNotImplementedError(
                f'GHMC: only use_sigmoid=True is supported, but '
                f'got use_sigmoid={use_sigmoid!r}')
        super().__init__(bins, momentum, loss_weight, reduction)

    def forward(self,
                pred: Tensor,
                target: Tensor,
                label_weight: Tensor,
                reduction_override: Optional[str] = None,
                **kwargs) -> Tensor:
        """GHM-C of logits against labels or a binary target.

        Args:
            pred (Tensor): logits (N, C).
            target (Tensor): labels (N,) in ``[0, C]`` or a target (N, C).
            label_weight (Tensor): (N,) or (N, C); ``> 0`` marks valid.
            reduction_override (str, optional): overrides ``reduction``.
            **kwargs: ignored (heads pass ``avg_factor``; GHM-C normalises
                by its own count of valid elements, as MMDetection's does),
                except that ``avg_factor`` with ``'sum'`` raises, as
                MMDetection's ``'sum'`` does.

        Returns:
            Tensor: the loss times ``loss_weight``.
        """
        reduction = self.resolve_reduction(reduction_override)
        if kwargs.get('avg_factor') is not None:
            check_avg_factor(self.loss_name, reduction, kwargs['avg_factor'])
        with_labels = _check_ghmc_inputs(pred, target, label_weight,
                                         reduction)
        return self.apply_loss_weight(_ghmc(
            pred, target, label_weight, with_labels, self.bins,
            self.momentum, self.acc_sum, reduction, None))


@MODELS.register_module()
class GHMR(_HarmonizedLoss):
    """GHM-R loss (MMDetection 3.3's twin); see :func:`ghmr_loss`.

    Paper: Li et al., "Gradient Harmonized Single-stage Detector", AAAI 2019, https://arxiv.org/abs/1811.05181

    Args:
        mu (float): the authentic smooth L1 parameter (> 0).
        bins (int): number of gradient-norm bins (>= 1).
        momentum (float): moving-average factor of the bin counts, in
            ``[0, 1)``; 0 uses the counts of each call.
        loss_weight (float): factor applied to the loss.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
    """

    top_edge = GHMR_TOP_EDGE

    def __init__(self,
                 mu=0.02,
                 bins=10,
                 momentum=0,
                 loss_weight=1.0,
                 reduction='mean'):
        self_name = type(self).__name__
        mu = float(check_positive(self_name, 'mu', mu))
        super().__init__(bins, momentum, loss_weight, reduction)
        self.mu = mu

    def forward(self,
                pred: Tensor,
                target: Tensor,
                label_weight: Tensor,
                avg_factor=None,
                reduction_override: Optional[str] = None) -> Tensor:
        """GHM-R of regression deltas.

        Args:
            pred (Tensor): deltas (N, 4) (or (N, 4 * C)).
            target (Tensor): targets shaped like ``pred``.
            label_weight (Tensor): shaped like ``pred``; ``> 0`` marks
                valid elements.
            avg_factor: ignored, as by MMDetection (GHM-R normalises by
                ``sum(label_weight)``); heads pass it. With ``'sum'`` it
                raises, as MMDetection's ``'sum'`` does.
            reduction_override (str, optional): overrides ``reduction``.

        Returns:
            Tensor: the loss times ``loss_weight``.
        """
        reduction = self.resolve_reduction(reduction_override)
        if avg_factor is not None:
            check_avg_factor(self.loss_name, reduction, avg_factor)
        _check_ghmr_inputs(pred, target, label_weight, reduction)
        return self.apply_loss_weight(_ghmr(
            pred, target, label_weight, self.mu, self.bins, self.momentum,
            self.acc_sum, reduction, None))

    def extra_repr(self) -> str:
        return f'mu={self.mu}, ' + super().extra_repr()
