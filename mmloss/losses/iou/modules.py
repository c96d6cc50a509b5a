"""The IoU family's registered modules (``mmloss.<Name>`` in configs).

Each module holds its options, validated at construction, and calls its
pure function (:mod:`.functions`) with MMDetection's forward arguments; the
function checks the inputs, so a module checks nothing twice.
"""
import warnings
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ... import geometry as geo
from ...checks import check_in_range, check_positive, check_weight_shape
from ...engine import dispatch
from ...errors import LossTypeError, LossValueError
from ...precision import compute_dtype, restore_loss, to_dtype, upcast
from ...reduction import Reduction
from ...registry import MODELS
from ..base import BaseLoss
from . import formulas as F
from .functions import (alpha_iou_loss, bounded_iou_loss, ciou_loss,
                        diou_loss, eiou_loss, focal_eiou_loss, giou_loss,
                        iou_loss, mpdiou_loss, siou_loss, variant_iou_loss,
                        wise_iou_loss)

__all__ = [
    'IoUFamilyLoss', 'IoULoss', 'GIoULoss', 'DIoULoss', 'CIoULoss',
    'EIoULoss', 'SIoULoss', 'BoundedIoULoss', 'VariantIoULoss',
    'AlphaIoULoss', 'WiseIoULoss', 'MPDIoULoss', 'FocalEIoULoss'
]


class IoUFamilyLoss(BaseLoss):
    """Shared base of every IoU-family module.

    Subclasses name their pure function in ``loss_function`` and its extra
    arguments in :meth:`loss_kwargs`; this class maps MMDetection's (n, 4)
    weights to per-box weights and calls the function, which checks the
    inputs (errors name the module) and reduces.

    Forward args (as MMDetection's):
        pred (Tensor): predicted boxes (..., 4).
        target (Tensor): target boxes (..., 4).
        weight (Tensor, optional): per-box weight (...), or (..., 4) which
            is averaged over the last dimension.
        avg_factor (float | Tensor, optional): denominator of the mean.
        reduction_override (str, optional): ``'none'``, ``'mean'``, ``'sum'``.
    """

    loss_function = None
    #: per-coordinate losses (BoundedIoU) keep (..., 4) weights as they are
    elementwise_coords = False
    #: set on the instance by its first call with rows (see
    #: :meth:`warn_if_deltas`); a class default, so modules pickled before
    #: it existed load too
    boxes_checked = False

    def __init__(self, eps: float = 1e-6, reduction: str = 'mean',
                 loss_weight: float = 1.0):
        super().__init__(reduction=reduction, loss_weight=loss_weight)
        self.eps = check_positive(self.loss_name, 'eps', eps, allow_zero=True)

    def loss_kwargs(self) -> dict:
        return dict(eps=self.eps)

    def box_weight(self, pred: Tensor,
                   weight: Optional[Tensor]) -> Optional[Tensor]:
        """``weight`` in the loss's shape: MMDetection heads pass (n, 4)
        box weights, averaged here ((n, 1) is taken as (n,)); a
        per-coordinate loss broadcasts a per-box weight (...) over the
        coordinates. No checks: the loss function checks what it gets."""
        if not (isinstance(weight, Tensor) and isinstance(pred, Tensor)):
            return weight
        if self.elementwise_coords:
            if weight.dim() == pred.dim() - 1:
                return weight.unsqueeze(-1)
            return weight
        if pred.dim() > 1 and weight.dim() == pred.dim():
            if weight.shape == pred.shape:
                return weight.mean(-1)
            if weight.shape[-1] == 1:  # (..., 1): a per-box column
                return weight.squeeze(-1)
        return weight

    def forward(self, pred: Tensor, target: Tensor,
                weight: Optional[Tensor] = None,
                avg_factor: Optional[Union[float, Tensor]] = None,
                reduction_override: Optional[str] = None,
                **kwargs) -> Tensor:
        reduction = self.resolve_reduction(reduction_override)
        extra = self.call_kwargs(kwargs)
        loss = type(self).loss_function(
            pred, target, self.box_weight(pred, weight), reduction=reduction,
            avg_factor=avg_factor, **self.loss_kwargs(), **extra)
        self.warn_if_deltas(pred, target)
        return self.apply_loss_weight(loss)

    def warn_if_deltas(self, pred: Tensor, target: Tensor) -> None:
        """Warn once if most rows of ``pred`` or ``target`` are no boxes.

        An IoU loss wants decoded ``(x1, y1, x2, y2)`` boxes; a head left at
        ``reg_decoded_bbox=False`` passes encoded deltas, about three in
        four of which have ``x2 < x1`` or ``y2 < y1``, and the loss then
        trains on nonsense without an error. Only the module's first call
        with rows looks (one host sync, then a flag on the instance), so
        later calls cost nothing. Called after the loss function, whose
        entry checks have vetted the inputs.
        """
        if self.boxes_checked or pred.shape[:-1].numel() == 0:
            return
        self.boxes_checked = True
        with torch.no_grad():
            inverted = torch.stack([
                (boxes[..., 2:] < boxes[..., :2]).any(-1).float().mean()
                for boxes in (pred.detach(), target.detach())])
            worst = inverted.max().item()
        if worst > 0.5:
            warnings.warn(
                f'{self.loss_name}: {worst:.0%} of the rows of pred or '
                f'target (shapes {tuple(pred.shape)} and '
                f'{tuple(target.shape)}) are not valid boxes (x2 < x1 or '
                f'y2 < y1): the head is probably passing encoded deltas. '
                f'IoU-family losses need decoded boxes: set '
                f'reg_decoded_bbox=True in the head.', UserWarning,
                stacklevel=2)

    def call_kwargs(self, kwargs: dict) -> dict:
        """Per-call keyword arguments; the mmdet twins take none."""
        if kwargs:
            raise LossTypeError(f'{self.loss_name}: unexpected keyword '
                                f'argument(s) {sorted(kwargs)}')
        return {}

    def extra_repr(self) -> str:
        args = ', '.join(f'{k}={v!r}' for k, v in self.loss_kwargs().items())
        return f'{args}, {super().extra_repr()}'


@MODELS.register_module()
class IoULoss(IoUFamilyLoss):
    """IoU loss (UnitBox): ``-log IoU``, ``1 - IoU`` or ``1 - IoU**2``.

    Args:
        linear (bool): deprecated; ``True`` means ``mode='linear'``.
        eps (float): lower clamp of the IoU.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): factor on the loss.
        mode (str): ``'linear'``, ``'square'`` or ``'log'``.

    Paper: Yu et al., "UnitBox: An Advanced Object Detection Network", ACM MM 2016, https://arxiv.org/abs/1608.01471
    """

    loss_function = staticmethod(iou_loss)

    def __init__(self, linear: bool = False, eps: float = 1e-6,
                 reduction: str = 'mean', loss_weight: float = 1.0,
                 mode: str = 'log'):
        super().__init__(eps=eps, reduction=reduction,
                         loss_weight=loss_weight)
        if mode not in F.SCALE_MODES:
            raise LossValueError(
                f'IoULoss: mode must be one of {F.SCALE_MODES}, '
                f'but got {mode!r}')
        if linear:
            mode = 'linear'
            warnings.warn("IoULoss: linear=True is deprecated, use "
                          "mode='linear'", DeprecationWarning)
        self.linear = linear
        self.mode = mode

    def loss_kwargs(self) -> dict:
        return dict(mode=self.mode, eps=self.eps)


def _overlap_module(name: str, function, doc: str) -> type:
    """Register an IoU-family module that only calls ``function`` with
    ``eps`` (GIoU, DIoU, CIoU: the base class does everything else)."""
    cls = type(name, (IoUFamilyLoss, ), dict(
        __doc__=doc, __module__=__name__, __qualname__=name,
        loss_function=staticmethod(function)))
    return MODELS.register_module(module=cls)


GIoULoss = _overlap_module('GIoULoss', giou_loss, """GIoU loss ``1 - GIoU`` (see :func:`giou_loss`).

    Paper: Rezatofighi et al., "Generalized Intersection over Union", CVPR 2019, https://arxiv.org/abs/1902.09630
    """)
DIoULoss = _overlap_module('DIoULoss', diou_loss, """DIoU loss ``1 - DIoU`` (see :func:`diou_loss`).

    Paper: Zheng et al., "Distance-IoU Loss", AAAI 2020, https://arxiv.org/abs/1911.08287
    """)
CIoULoss = _overlap_module('CIoULoss', ciou_loss, """CIoU loss ``1 - CIoU`` (see :func:`ciou_loss`).

    Paper: Zheng et al., "Enhancing Geometric Factors in Model Learning and Inference for Object Detection and Instance Segmentation", TCYB 2021, https://arxiv.org/abs/2005.03572
    """)


@MODELS.register_module()
class EIoULoss(IoUFamilyLoss):
    """MMDetection's (libfacedetection's) extended IoU loss, smoothed.

    Args:
        eps, reduction, loss_weight: as :class:`IoUFamilyLoss`.
        smooth_point (float): where the quadratic turns linear (> 0).

    Paper: Peng and Yu, "A Systematic IoU-Related Method: Beyond Simplified Regression for Better Localization", TIP 2021, https://ieeexplore.ieee.org/document/9429909
    """

    loss_function = staticmethod(eiou_loss)

    def __init__(self, eps: float = 1e-6, reduction: str = 'mean',
                 loss_weight: float = 1.0, smooth_point: float = 0.1):
        super().__init__(eps=eps, reduction=reduction,
                         loss_weight=loss_weight)
        self.smooth_point = check_positive(self.loss_name, 'smooth_point',
                                           smooth_point)

    def loss_kwargs(self) -> dict:
        return dict(smooth_point=self.smooth_point, eps=self.eps)


@MODELS.register_module()
class SIoULoss(IoUFamilyLoss):
    """SIoU loss (see :func:`siou_loss`).

    Args:
        eps, reduction, loss_weight: as :class:`IoUFamilyLoss`.
        neg_gamma (bool): ``gamma = Lambda - 2`` as in the paper.

    Paper: Gevorgyan, "SIoU Loss: More Powerful Learning for Bounding Box Regression", 2022, https://arxiv.org/abs/2205.12740
    """

    loss_function = staticmethod(siou_loss)

    def __init__(self, eps: float = 1e-6, reduction: str = 'mean',
                 loss_weight: float = 1.0, neg_gamma: bool = False):
        super().__init__(eps=eps, reduction=reduction,
                         loss_weight=loss_weight)
        if not isinstance(neg_gamma, bool):
            raise LossTypeError(f'SIoULoss: neg_gamma must be a bool, but got '
                                f'{neg_gamma!r}')
        self.neg_gamma = neg_gamma

    def loss_kwargs(self) -> dict:
        return dict(eps=self.eps, neg_gamma=self.neg_gamma)


@MODELS.register_module()
class BoundedIoULoss(IoUFamilyLoss):
    """Bounded IoU loss (see :func:`bounded_iou_loss`), per coordinate.

    A per-box weight (...) is broadcast over the four coordinates.

    Args:
        beta (float): smooth-L1 threshold (> 0).
        eps (float): stabiliser of the ratios.
        reduction, loss_weight: as :class:`IoUFamilyLoss`.

    Paper: Tychsen-Smith and Petersson, "Improving Object Localization with Fitness NMS and Bounded IoU Loss", CVPR 2018, https://arxiv.org/abs/1711.00164
    """

    loss_function = staticmethod(bounded_iou_loss)
    elementwise_coords = True

    def __init__(self, beta: float = 0.2, eps: float = 1e-3,
                 reduction: str = 'mean', loss_weight: float = 1.0):
        super().__init__(eps=eps, reduction=reduction,
                         loss_weight=loss_weight)
        self.beta = check_positive(self.loss_name, 'beta', beta)

    def loss_kwargs(self) -> dict:
        return dict(beta=self.beta, eps=self.eps)


def _check_mode(name: str, mode: str, modes=F.IOU_MODES) -> str:
    if mode not in modes:
        raise LossValueError(f'{name}: mode must be one of {modes}, but got '
                             f'{mode!r}')
    return mode


def _check_focaler(name: str, focaler):
    if focaler is None:
        return None
    if not isinstance(focaler, (tuple, list)) or len(focaler) != 2:
        raise LossValueError(f'{name}: focaler must be a pair (d, u), but got '
                             f'{focaler!r}')
    low = check_in_range(name, 'focaler[0]', focaler[0], 0, 1)
    high = check_in_range(name, 'focaler[1]', focaler[1], 0, 1,
                          high_inclusive=True)
    if not low < high:
        raise LossValueError(f'{name}: focaler must have d < u, but got '
                             f'{focaler!r}')
    return (float(low), float(high))


@MODELS.register_module()
class VariantIoULoss(IoUFamilyLoss):
    """Any IoU variant with optional Inner-IoU and Focaler-IoU terms.

    See :func:`variant_iou_loss`. E.g. Inner-CIoU:
    ``dict(type='mmloss.VariantIoULoss', mode='ciou', inner_ratio=0.8)``;
    Focaler-GIoU: ``mode='giou', focaler=(0.0, 0.95)``.

    Args:
        mode (str): ``'iou'``, ``'giou'``, ``'diou'``, ``'ciou'`` or
            ``'siou'``.
        inner_ratio (float, optional): Inner-IoU's auxiliary box scale (> 0).
        focaler (tuple[float, float], optional): Focaler-IoU's ``(d, u)``.
        eps, reduction, loss_weight: as :class:`IoUFamilyLoss`.

    Paper: Zhang, Xu and Zhang, "Inner-IoU: More Effective Intersection over Union Loss with Auxiliary Bounding Box", 2023, https://arxiv.org/abs/2311.02877
    Paper: Zhang and Zhang, "Focaler-IoU: More Focused Intersection over Union Loss", 2024, https://arxiv.org/abs/2401.10525
    """

    loss_function = staticmethod(variant_iou_loss)

    def __init__(self, mode: str = 'giou',
                 inner_ratio: Optional[float] = None,
                 focaler: Optional[Sequence[float]] = None,
                 eps: float = 1e-7, reduction: str = 'mean',
                 loss_weight: float = 1.0):
        super().__init__(eps=eps, reduction=reduction,
                         loss_weight=loss_weight)
        self.mode = _check_mode(self.loss_name, mode, F.VARIANT_MODES)
        self.inner_ratio = None if inner_ratio is None else check_positive(
            self.loss_name, 'inner_ratio', inner_ratio)
        self.focaler = _check_focaler(self.loss_name, focaler)

    def loss_kwargs(self) -> dict:
        return dict(mode=self.mode, inner_ratio=self.inner_ratio,
                    focaler=self.focaler, eps=self.eps)


@MODELS.register_module()
class AlphaIoULoss(IoUFamilyLoss):
    """Alpha-IoU loss (see :func:`alpha_iou_loss`).

    Args:
        alpha (float): the power (> 0; the paper recommends 3).
        mode (str): ``'iou'``, ``'giou'``, ``'diou'`` or ``'ciou'``.
        eps, reduction, loss_weight: as :class:`IoUFamilyLoss`.

    Paper: He et al., "Alpha-IoU: A Family of Power Intersection over Union Losses for Bounding Box Regression", NeurIPS 2021, https://arxiv.org/abs/2110.13675
    """

    loss_function = staticmethod(alpha_iou_loss)

    def __init__(self, alpha: float = 3.0, mode: str = 'iou',
                 eps: float = 1e-7, reduction: str = 'mean',
                 loss_weight: float = 1.0):
        super().__init__(eps=eps, reduction=reduction,
                         loss_weight=loss_weight)
        self.alpha = check_positive(self.loss_name, 'alpha', alpha)
        self.mode = _check_mode(self.loss_name, mode)

    def loss_kwargs(self) -> dict:
        return dict(alpha=self.alpha, mode=self.mode, eps=self.eps)


@MODELS.register_module()
class MPDIoULoss(IoUFamilyLoss):
    """MPDIoU loss (see :func:`mpdiou_loss`).

    Args:
        img_size (tuple[float, float]): input image ``(width, height)``;
            ``forward(..., img_size=...)`` overrides it per call (a pair or
            a per-box tensor (..., 2)).
        eps, reduction, loss_weight: as :class:`IoUFamilyLoss`.

    Paper: Ma and Xu, "MPDIoU: A Loss for Efficient and Accurate Bounding Box Regression", 2023, https://arxiv.org/abs/2307.07662
    """

    loss_function = staticmethod(mpdiou_loss)

    def __init__(self, img_size: Sequence[float] = (640, 640),
                 eps: float = 1e-7, reduction: str = 'mean',
                 loss_weight: float = 1.0):
        super().__init__(eps=eps, reduction=reduction,
                         loss_weight=loss_weight)
        if not isinstance(img_size, (tuple, list)) or len(img_size) != 2:
            raise LossValueError(
                f'MPDIoULoss: img_size must be a pair (width, '
                f'height), but got {img_size!r}')
        self.img_size = tuple(
            check_positive(self.loss_name, 'img_size', float(s))
            for s in img_size)

    def loss_kwargs(self) -> dict:
        return dict(eps=self.eps)

    def call_kwargs(self, kwargs: dict) -> dict:
        img_size = kwargs.pop('img_size', None)
        super().call_kwargs(kwargs)
        if img_size is None:
            img_size = self.img_size
        elif isinstance(img_size, Tensor):
            if img_size.shape[-1:] != (2, ):
                raise LossValueError(f'MPDIoULoss: img_size must have shape '
                                     f'(..., 2), but has shape '
                                     f'{tuple(img_size.shape)}')
        elif not isinstance(img_size, (tuple, list)) or len(img_size) != 2:
            raise LossValueError(
                f'MPDIoULoss: img_size must be a pair (width, '
                f'height), but got {img_size!r}')
        return dict(img_size=img_size)


@MODELS.register_module()
class FocalEIoULoss(IoUFamilyLoss):
    """Focal-EIoU loss (see :func:`focal_eiou_loss`); not mmdet's EIoU.

    Args:
        gamma (float): power of the IoU focal factor (>= 0).
        eps, reduction, loss_weight: as :class:`IoUFamilyLoss`.

    Paper: Zhang et al., "Focal and Efficient IOU Loss for Accurate Bounding Box Regression", Neurocomputing 2022, https://arxiv.org/abs/2101.08158
    """

    loss_function = staticmethod(focal_eiou_loss)

    def __init__(self, gamma: float = 0.5, eps: float = 1e-7,
                 reduction: str = 'mean', loss_weight: float = 1.0):
        super().__init__(eps=eps, reduction=reduction,
                         loss_weight=loss_weight)
        self.gamma = check_positive(self.loss_name, 'gamma', gamma,
                                    allow_zero=True)

    def loss_kwargs(self) -> dict:
        return dict(gamma=self.gamma, eps=self.eps)


WISE_VERSIONS = ('v1', 'v2', 'v3')


def positive_rows(pred: Tensor, weight: Optional[Tensor]
                  ) -> Optional[Tensor]:
    """Which rows of a box loss have a positive weight (bool, broadcasting
    to ``pred.shape[:-1]``), ``None`` without a weight.

    A per-box weight (...) counts as it is; a per-coordinate one (..., 4)
    or (..., 1) makes a row positive if any of its weights is > 0.
    """
    if not isinstance(weight, Tensor):
        return None
    positive = weight.detach() > 0
    if weight.dim() == pred.dim() and pred.dim() > 1:
        positive = positive.any(-1)
    return positive


@MODELS.register_module()
class WiseIoULoss(IoUFamilyLoss):
    """Wise-IoU loss (see :func:`wise_iou_loss`).

    The running mean of ``1 - IoU`` is the buffer ``running_mean`` (saved in
    checkpoints), updated in training mode after each call as
    ``mean <- (1 - momentum) mean + momentum * batch mean`` (no host sync).

    Args:
        version (str): ``'v1'``, ``'v2'`` or ``'v3'``.
        alpha, delta (float): v3's focusing parameters (paper: 1.9, 3).
        gamma (float): v2's power (paper: 0.5).
        momentum (float): running-mean momentum in (0, 1] (paper: 1e-2).
        eps, reduction, loss_weight: as :class:`IoUFamilyLoss`.

    Paper: Tong et al., "Wise-IoU: Bounding Box Regression Loss with Dynamic Focusing Mechanism", 2023, https://arxiv.org/abs/2301.10051
    """

    def __init__(self, version: str = 'v3', alpha: float = 1.9,
                 delta: float = 3.0, gamma: float = 0.5,
                 momentum: float = 1e-2, eps: float = 1e-7,
                 reduction: str = 'mean', loss_weight: float = 1.0):
        super().__init__(eps=eps, reduction=reduction,
                         loss_weight=loss_weight)
        if version not in WISE_VERSIONS:
            raise LossValueError(f'WiseIoULoss: version must be one of '
                                 f'{WISE_VERSIONS}, but got {version!r}')
        self.version = version
        self.alpha = check_positive(self.loss_name, 'alpha', alpha)
        self.delta = check_positive(self.loss_name, 'delta', delta)
        self.gamma = check_positive(self.loss_name, 'gamma', gamma)
        self.momentum = check_in_range(self.loss_name, 'momentum', momentum,
                                       0, 1, high_inclusive=True)
        if momentum == 0:
            raise LossValueError(
                'WiseIoULoss: momentum must lie in (0, 1], but '
                'got 0')
        self.register_buffer('running_mean', torch.ones(()))

    def loss_kwargs(self) -> dict:
        return dict(version=self.version, alpha=self.alpha, delta=self.delta,
                    gamma=self.gamma, eps=self.eps)

    def forward(self, pred: Tensor, target: Tensor,
                weight: Optional[Tensor] = None,
                avg_factor: Optional[Union[float, Tensor]] = None,
                reduction_override: Optional[str] = None,
                **kwargs) -> Tensor:
        reduction = self.resolve_reduction(reduction_override)
        self.call_kwargs(kwargs)
        loss = wise_iou_loss(pred, target, self.running_mean,
                             **self.loss_kwargs())
        box_weight = self.box_weight(pred, weight)
        check_weight_shape(self.loss_name, box_weight, loss.shape)
        reduce = Reduction(self.loss_name, box_weight, reduction,
                           avg_factor).checked()
        if self.training and loss.numel() > 0:
            # from the weight as given: a row is positive if any of its
            # (n, 4) weights is, whatever their mean
            self._update_mean(pred, target, positive_rows(pred, weight))
        self.warn_if_deltas(pred, target)
        # reduced in float32 at least (half inputs: a float32 result)
        return self.apply_loss_weight(restore_loss(
            reduce.apply(to_dtype(loss, compute_dtype(loss))), pred,
            reduce.reduces))

    @torch.no_grad()
    def _update_mean(self, pred: Tensor, target: Tensor,
                     rows: Optional[Tensor] = None) -> None:
        with dispatch.autocast_off(pred):
            self._update_mean_of(*upcast(pred.detach(), target.detach()),
                                 rows)

    def _update_mean_of(self, p: Tensor, t: Tensor,
                        rows: Optional[Tensor] = None) -> None:
        """Fold the batch mean of ``1 - IoU`` over ``rows`` (bool, the
        rows with a positive weight; all when ``None``) into the buffer.

        Rows of weight 0 (the negatives an anchor head passes with
        ``reg_decoded_bbox=True``) are no samples of the statistic, and
        non-finite rows would poison it for every later batch: only finite
        rows of positive weight count. A batch without any keeps the old
        mean. ``1 - IoU`` is clamped to ``[0, 1]``, its range for boxes.
        All without a host sync.
        """
        value = 1 - geo.aligned_iou(p, t, self.eps)
        # an Inf coordinate can give a finite IoU (I / Inf = 0): the row's
        # inputs decide
        keep = torch.isfinite(value + geo.nonfinite_rows(p, t))
        if rows is not None:
            keep = keep & rows.expand(value.shape)
        total = torch.where(keep, value.clamp(min=0, max=1), 0).sum()
        # 0 / 0 = NaN for a batch without a kept row: caught below
        batch = (total / keep.sum()).to(self.running_mean.dtype)
        updated = torch.lerp(self.running_mean, batch, self.momentum)
        self.running_mean.copy_(torch.where(torch.isfinite(updated), updated,
                                            self.running_mean))
