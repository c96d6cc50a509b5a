"""Zoo parity: mmdet 3.3 zoo configs trained twice, shipped and swapped.

One :class:`Family` per model family and loss combination names an
``mmdet::`` config. :func:`parity` loads it, shrinks it to what the CPU can
train in seconds (no pretrained weights, SyncBN as BN, batch augments that
resize off, plus any per-family edit, identical for both runs), builds the
shipped model and the swapped one (:func:`mmloss.swap.swap_losses`) with the
same network weights, trains each for two iterations of SGD on the same
generated batch (two 128 px images with random boxes, labels and, where the
family needs them, masks; ``mmdet.testing.demo_mm_inputs``) and returns
every loss component of both iterations of both runs.

Every random draw of a run (samplers, dropout, denoising queries) is seeded
identically before each iteration, so the two runs differ only by their
loss modules.

``python -m tests.zoo [NAME ...]`` prints the README's results table.
"""
import copy
import math
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

#: Image side (px) of the generated batch: small enough for the CPU, large
#: enough for five FPN levels and the RoI heads' 7x7/14x14 pooling.
IMAGE = 128
BATCH = 2
#: Boxes per generated image.
BOXES = [3, 4]
SEED = 0
LR = 0.01


@dataclass(frozen=True)
class Family:
    """One zoo config the parity test trains.

    Attributes:
        name (str): the family, as the README table names it.
        config (str): the ``mmdet::`` config.
        losses (str): the loss combination it exercises.
        masks (bool): whether the generated batch carries instance masks.
        edit (callable): ``edit(model_cfg)``, a further in-place shrink of
            the model config (the same for both runs); ``None`` for none.
        prepare (callable): ``prepare(model)`` after building, applied to
            both models (e.g. switching a head's optional loss on).
        note (str): what the edit or ``prepare`` does, for the table.
    """
    name: str
    config: str
    losses: str
    masks: bool = False
    edit: Optional[Callable[[dict], None]] = None
    prepare: Optional[Callable[[torch.nn.Module], None]] = None
    note: str = ''


def _cornernet_small(model):
    # Hourglass-104 (two stacks, ~200M parameters) trains for minutes a
    # step on two cores: one stack of a shallower, narrower hourglass.
    model['backbone'].update(num_stacks=1, downsample_times=3,
                             stage_channels=(64, 64, 96, 128),
                             stage_blocks=(1, 1, 1, 1), feat_channel=64)
    model['bbox_head'].update(num_feat_levels=1, in_channels=64)


def _queries(number):
    def edit(model):
        # a 128 px image has 16^2 + 8^2 + 4^2 + 2^2 = 340 encoder tokens,
        # fewer than the 900 top-k proposals the two-stage DETRs select
        model['num_queries'] = number
    return edit


def _epoch(epoch):
    def prepare(model):
        # TOOD reads the epoch from the message hub (set by the runner)
        from mmengine.logging import MessageHub
        MessageHub.get_current_instance().update_info('epoch', epoch)
    return prepare


def _yolox_l1(model):
    # YOLOX adds its L1 loss only for the last 15 epochs (YOLOXModeSwitchHook
    # sets use_l1): switch it on so the L1 twin is compared too.
    model.bbox_head.use_l1 = True


FAMILIES: List[Family] = [
    Family('RetinaNet', 'retinanet/retinanet_r50_fpn_1x_coco.py',
           'Focal + L1'),
    Family('Faster R-CNN', 'faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
           'CE (sigmoid RPN, softmax RoI) + L1'),
    Family('Cascade R-CNN', 'cascade_rcnn/cascade-rcnn_r50_fpn_1x_coco.py',
           'CE + SmoothL1 (3 stages)'),
    Family('Mask R-CNN', 'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
           'CE + L1 + mask CE', masks=True),
    Family('FCOS', 'fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py',
           'Focal + IoU + CE (centerness)'),
    Family('ATSS', 'atss/atss_r50_fpn_1x_coco.py',
           'Focal + GIoU + CE (centerness)'),
    Family('GFL', 'gfl/gfl_r50_fpn_1x_coco.py', 'QFL + DFL + GIoU'),
    Family('VFNet', 'vfnet/vfnet_r50_fpn_1x_coco.py', 'Varifocal + GIoU'),
    Family('TOOD (initial epochs)', 'tood/tood_r50_fpn_1x_coco.py',
           'Focal (initial_loss_cls) + GIoU', prepare=_epoch(0),
           note='epoch 0: ATSS assigner, initial loss'),
    Family('TOOD', 'tood/tood_r50_fpn_1x_coco.py',
           'QFL (activated) + GIoU', prepare=_epoch(4),
           note='epoch 4: task-aligned assigner, QFL'),
    Family('GHM RetinaNet', 'ghm/retinanet_r50_fpn_ghm-1x_coco.py',
           'GHM-C + GHM-R'),
    Family('Libra R-CNN', 'libra_rcnn/libra-faster-rcnn_r50_fpn_1x_coco.py',
           'CE + SmoothL1 (RPN) + BalancedL1'),
    Family('Dynamic R-CNN', 'dynamic_rcnn/dynamic-rcnn_r50_fpn_1x_coco.py',
           'CE + SmoothL1 (beta updated by the RoI head)'),
    Family('CenterNet', 'centernet/centernet_r18_8xb16-crop512-140e_coco.py',
           'GaussianFocal + L1'),
    Family('CenterNet (update)',
           'centernet/centernet-update_r50-caffe_fpn_ms-1x_coco.py',
           'GaussianFocal (pos/neg) + GIoU'),
    Family('CornerNet',
           'cornernet/cornernet_hourglass104_8xb6-210e-mstest_coco.py',
           'GaussianFocal + AssociativeEmbedding + SmoothL1',
           edit=_cornernet_small,
           note='one small hourglass stack instead of Hourglass-104'),
    Family('YOLOv3', 'yolo/yolov3_mobilenetv2_8xb24-320-300e_coco.py',
           'CE (sigmoid) + MSE'),
    Family('YOLOX', 'yolox/yolox_tiny_8xb8-300e_coco.py',
           'IoU + CE (sigmoid) + L1', prepare=_yolox_l1,
           note='use_l1 on (the last-15-epochs mode)'),
    Family('RTMDet', 'rtmdet/rtmdet_tiny_8xb32-300e_coco.py',
           'QFL + GIoU'),
    Family('DETR', 'detr/detr_r18_8xb2-500e_coco.py',
           'CE (softmax) + L1 + GIoU'),
    Family('Deformable DETR',
           'deformable_detr/deformable-detr_r50_16xb2-50e_coco.py',
           'Focal + L1 + GIoU'),
    Family('DINO', 'dino/dino-4scale_r50_8xb2-12e_coco.py',
           'Focal + L1 + GIoU (denoising queries)', edit=_queries(300),
           note='300 queries (340 encoder tokens at 128 px)'),
    Family('DDQ-DETR', 'ddq/ddq-detr-4scale_r50_8xb2-12e_coco.py',
           'Focal + L1 + GIoU (the aux head\'s DDQAuxLoss is built in '
           'code: compared, stays mmdet\'s)', edit=_queries(100),
           note='100 queries (340 encoder tokens at 128 px; time)'),
    Family('SOLOv2', 'solov2/solov2-light_r18_fpn_ms-3x_coco.py',
           'Dice + Focal', masks=True),
    Family('PointRend', 'point_rend/point-rend_r50-caffe_fpn_ms-1x_coco.py',
           'CE + L1 + mask CE (coarse and on points)', masks=True),
    Family('Seesaw (LVIS)',
           'seesaw_loss/mask-rcnn_r50_fpn_seesaw-loss_random-ms-2x_lvis-v1.py',
           'Seesaw + L1 + mask CE', masks=True),
    Family('Grid R-CNN', 'grid_rcnn/grid-rcnn_r50_fpn_gn-head_1x_coco.py',
           'CE + SmoothL1 (RPN) + CE (grid points)'),
    Family('RepPoints',
           'reppoints/reppoints-moment_r50_fpn-gn_head-gn_1x_coco.py',
           'Focal + SmoothL1 (init and refine)'),
    Family('SABL', 'sabl/sabl-retinanet_r50_fpn_1x_coco.py',
           'Focal + CE (bucket cls) + SmoothL1 (bucket reg)'),
    Family('FSAF', 'fsaf/fsaf_r50_fpn_1x_coco.py', 'Focal + IoU'),
    Family('Guided Anchoring', 'guided_anchoring/'
           'ga-retinanet_r50-caffe_fpn_1x_coco.py',
           'Focal (loc) + BoundedIoU (shape) + Focal + SmoothL1'),
]

#: Families of the brief that this machine cannot run, with why. The test
#: checks this list, so a family is never dropped silently.
CANNOT_RUN: Dict[str, str] = {
    'PAA': 'its assigner fits a Gaussian mixture with scikit-learn, '
           'which is not installed (no network here)',
    'QDTrack': 'tracking: needs video data (reference and key frames '
               'with instance ids across frames), not a detection batch',
    'GLIP': 'text-conditioned: needs a BERT tokenizer and weights '
            '(downloaded from the Hugging Face hub; no network here)',
    'Grounding DINO': 'text-conditioned: needs a BERT tokenizer and '
                      'weights (downloaded; no network here)',
}


def seed_everything(seed: int = SEED) -> None:
    """The same state for every generator a training step may draw from."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _walk(node, visit):
    if isinstance(node, dict):
        visit(node)
        for value in node.values():
            _walk(value, visit)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _walk(value, visit)


def _shrink_node(node: dict) -> None:
    init_cfg = node.get('init_cfg')
    if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained':
        node['init_cfg'] = None  # no network: no pretrained weights
    if node.get('pretrained') is not None:
        node['pretrained'] = None
    if node.get('type') == 'SyncBN':
        node['type'] = 'BN'  # no process group on one CPU process


def model_config(family: Family) -> Tuple[dict, dict, list]:
    """``(shipped, swapped, rows)``: the shrunk model configs and the swap
    rows of :func:`mmloss.swap.swap_losses`."""
    from mmloss.swap import load_config, swap_losses
    cfg = load_config('mmdet::' + family.config)
    model = cfg.to_dict()['model']
    _walk(model, _shrink_node)
    preprocessor = model.get('data_preprocessor', {})
    # YOLOX's random resize would train 480-800 px batches.
    preprocessor.pop('batch_augments', None)
    if family.edit is not None:
        family.edit(model)
    swapped, rows = swap_losses(dict(model=model))
    return model, swapped['model'], rows


def num_classes(model_cfg: dict) -> int:
    """The first ``num_classes`` of the model config."""
    found = []
    _walk(model_cfg, lambda node: found.append(node['num_classes'])
          if 'num_classes' in node else None)
    return found[0]


def make_batch(family: Family, classes: int) -> dict:
    """The generated batch (a fresh copy: preprocessing pads in place)."""
    from mmdet.testing import demo_mm_inputs
    return demo_mm_inputs(batch_size=BATCH, image_shapes=(3, IMAGE, IMAGE),
                          num_items=BOXES, num_classes=classes,
                          with_mask=family.masks)


def build(model_cfg: dict):
    from mmdet.registry import MODELS
    from mmengine.config import ConfigDict
    from mmengine.logging import MMLogger
    # init_weights logs every parameter's initialiser at INFO
    MMLogger.get_current_instance().setLevel('WARNING')
    seed_everything()
    model = MODELS.build(ConfigDict(copy.deepcopy(model_cfg)))
    model.init_weights()
    return model


def _components(losses: dict) -> Dict[str, torch.Tensor]:
    """Every loss component, a list one (per level, per stage) split."""
    out = {}
    for key, value in losses.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.detach().clone()
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                out[f'{key}[{index}]'] = item.detach().clone()
    return out


def train(model, family: Family, classes: int,
          iterations: int = 2) -> List[Dict[str, torch.Tensor]]:
    """Loss components of each of ``iterations`` SGD steps."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    history = []
    for iteration in range(iterations):
        seed_everything(SEED + iteration)
        data = model.data_preprocessor(make_batch(family, classes), True)
        losses = model(**data, mode='loss')
        history.append(_components(losses))
        total, _ = model.parse_losses(losses)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    return history


@dataclass
class Result:
    """Both runs of a family: components per iteration, swap rows."""
    family: Family
    rows: list
    shipped: List[Dict[str, torch.Tensor]]
    swapped: List[Dict[str, torch.Tensor]]
    seconds: float = 0.0
    unloaded: List[str] = field(default_factory=list)
    #: modules of mmloss in the shipped and in the swapped model
    mmloss_modules: Tuple[int, int] = (0, 0)

    @property
    def swapped_types(self) -> List[str]:
        return sorted({r.old_type.split('.')[-1] for r in self.rows
                       if r.status == 'swapped'})

    def max_relative_difference(self, iteration: int = 0) -> float:
        """max over components of ``|a - b| / max(|a|, 1e-12)``."""
        worst = 0.0
        for key, a in self.shipped[iteration].items():
            b = self.swapped[iteration][key]
            diff = (a.double() - b.double()).abs()
            scale = a.double().abs().clamp_min(1e-12)
            value = (diff / scale).max().item() if a.numel() else 0.0
            worst = max(worst, value if math.isfinite(value) else math.inf)
        return worst


def _count_mmloss(model) -> int:
    return sum(type(module).__module__.split('.')[0] == 'mmloss'
               for module in model.modules())


def parity(family: Family) -> Result:
    """Train the shipped and the swapped model of ``family`` twice each."""
    start = time.perf_counter()
    shipped_cfg, swapped_cfg, rows = model_config(family)
    classes = num_classes(shipped_cfg)
    shipped = build(shipped_cfg)
    twin = build(swapped_cfg)
    # Same network weights; loss modules may hold their own state (GHM's
    # running statistics) and start from their own initial values.
    state = copy.deepcopy(shipped.state_dict())
    missing, unexpected = twin.load_state_dict(state, strict=False)
    if family.prepare is not None:
        family.prepare(shipped)
        family.prepare(twin)
    result = Result(family, rows, train(shipped, family, classes),
                    train(twin, family, classes))
    result.unloaded = sorted(missing) + sorted(unexpected)
    result.mmloss_modules = (_count_mmloss(shipped), _count_mmloss(twin))
    result.seconds = time.perf_counter() - start
    return result


def table_row(result: Result, status: str = 'equal') -> str:
    family = result.family
    counts: Dict[str, int] = {}
    for key in result.shipped[0]:
        # per level, per stage, per decoder layer: counted once
        base = key.split('[')[0].split('.')[-1]
        counts[base] = counts.get(base, 0) + 1
    compared = ', '.join(f'{k} x{n}' if n > 1 else k
                         for k, n in counts.items())
    return (f'| {family.name} | `{family.config}` | '
            f'{", ".join(result.swapped_types)} | {compared} | '
            f'{result.max_relative_difference(0):.1e} | {status} |')


TABLE_HEADER = ('| family | config (`mmdet::`) | losses swapped | '
                'first-iteration components compared | max rel. diff | '
                'status |\n|---|---|---|---|---|---|')


def main(names: List[str]) -> None:
    torch.set_num_threads(1)
    from mmdet.utils import register_all_modules
    register_all_modules()
    import mmloss  # noqa: F401  registers the twins
    print(TABLE_HEADER)
    for family in FAMILIES:
        if names and family.name not in names:
            continue
        try:
            result = parity(family)
        except Exception as error:  # report and go on to the next family
            print(f'| {family.name} | FAILED: {type(error).__name__}: '
                  f'{str(error)[:300]}', flush=True)
            continue
        print(table_row(result), f'({result.seconds:.1f} s, second '
              f'iteration {result.max_relative_difference(1):.1e})',
              flush=True)


if __name__ == '__main__':
    main(sys.argv[1:])
