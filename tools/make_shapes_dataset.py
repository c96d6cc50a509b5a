"""Generate the bundled default dataset: coloured shapes in COCO format.

The dataset needs no download. It is drawn with numpy only from fixed seeds,
so regenerating it gives byte-identical files::

    python tools/make_shapes_dataset.py            # writes data/shapes/
    python tools/make_shapes_dataset.py --out-dir /tmp/shapes --force

Layout (what ``configs/_base_/datasets/shapes_detection.py`` reads)::

    data/shapes/
      annotations/train.json  annotations/val.json   (COCO detection format)
      train/000000.png ...     val/000000.png ...

Each 128 x 128 RGB image has a plain background with light noise and one to
four non-overlapping shapes of three classes (circle, square, triangle) in
random colours, 18 to 56 px across. Boxes are the tight extents of the drawn
pixels. ``tools/train.py`` calls :func:`ensure_shapes_dataset` when a
config's annotation file is missing, so the first ``make demo`` creates it.
"""
import argparse
import json
import os
import os.path as osp
import shutil
import struct
import sys
import tempfile
import time
import zlib

import numpy as np

CLASSES = ('circle', 'square', 'triangle')
IMAGE_SIZE = 128
SPLITS = {'train': (300, 0), 'val': (100, 1)}  # split: (num_images, seed)
MIN_SIZE, MAX_SIZE = 18, 56
MAX_OBJECTS = 4
# Bumped whenever the drawing changes, so a stale folder is regenerated.
VERSION = 1


def encode_png(image):
    """Encode an ``(H, W, 3)`` uint8 RGB array as PNG bytes (numpy + zlib).

    Written by hand rather than through an imaging library so the bytes only
    depend on the pixels (and zlib), never on a codec version.
    """
    height, width, _ = image.shape
    raw = np.zeros((height, width * 3 + 1), dtype=np.uint8)  # filter byte 0
    raw[:, 1:] = image.reshape(height, width * 3)

    def chunk(kind, payload):
        body = kind + payload
        return (struct.pack('>I', len(payload)) + body +
                struct.pack('>I', zlib.crc32(body) & 0xFFFFFFFF))

    header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) +
            chunk(b'IDAT', zlib.compress(raw.tobytes(), 6)) +
            chunk(b'IEND', b''))


def shape_mask(kind, cx, cy, size, pointing_up, yy, xx):
    """Boolean mask of one shape of ``size`` px centred at ``(cx, cy)``."""
    half = size / 2.0
    if kind == 'circle':
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= half ** 2
    if kind == 'square':
        return (np.abs(xx - cx) <= half) & (np.abs(yy - cy) <= half)
    # Isosceles triangle with a horizontal base; apex up or down.
    top, bottom = cy - half, cy + half
    if pointing_up:
        depth = (yy - top) / size          # 0 at the apex, 1 at the base
    else:
        depth = (bottom - yy) / size
    inside_rows = (yy >= top) & (yy <= bottom)
    return inside_rows & (np.abs(xx - cx) <= half * depth)


def contrasting_colour(rng, background):
    """A random RGB colour far enough from the background to be seen."""
    while True:
        colour = rng.integers(0, 256, size=3)
        if np.abs(colour - background).sum() > 180:
            return colour


def draw_image(rng):
    """Draw one image; returns ``(image, objects)`` with COCO-style boxes."""
    background = rng.integers(0, 256, size=3)
    noise = rng.integers(-8, 9, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    image = np.clip(background + noise, 0, 255)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64)
    occupied = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    objects = []
    wanted = int(rng.integers(1, MAX_OBJECTS + 1))
    for _ in range(wanted * 10):  # a few tries per wanted shape
        if len(objects) == wanted:
            break
        label = int(rng.integers(0, len(CLASSES)))
        size = float(rng.uniform(MIN_SIZE, MAX_SIZE))
        margin = size / 2 + 1
        cx = float(rng.uniform(margin, IMAGE_SIZE - margin))
        cy = float(rng.uniform(margin, IMAGE_SIZE - margin))
        pointing_up = bool(rng.integers(0, 2))
        mask = shape_mask(CLASSES[label], cx, cy, size, pointing_up, yy, xx)
        # Keep shapes apart (a 2 px gap) so every box is fully visible.
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
        if occupied[max(y0 - 2, 0):y1 + 3, max(x0 - 2, 0):x1 + 3].any():
            continue
        occupied[y0:y1 + 1, x0:x1 + 1] = True
        image[mask] = contrasting_colour(rng, background)
        objects.append(
            dict(label=label,
                 bbox=[int(x0), int(y0), int(x1 - x0 + 1), int(y1 - y0 + 1)],
                 area=int(mask.sum())))
    return image.astype(np.uint8), objects


class Progress:
    """``split: done/total images`` on one line of ``stream`` (stderr).

    On a terminal the line is redrawn in place; otherwise a line is written
    at every quarter, so logs stay short.
    """

    def __init__(self, out_dir, total, stream=None):
        self.stream = stream or sys.stderr
        self.inplace = getattr(self.stream, 'isatty', lambda: False)()
        self.total = total
        self.start = time.monotonic()
        self.write(f'Generating the bundled shapes dataset in {out_dir} '
                   f'({total} images, first use only)\n')

    def write(self, text):
        self.stream.write(text)
        self.stream.flush()

    def step(self, split, index, count):
        line = f'  {split}: {index + 1}/{count} images'
        if self.inplace:
            self.write('\r' + line + ('\n' if index + 1 == count else ''))
        elif (index + 1) * 4 // count != index * 4 // count:
            self.write(line + '\n')

    def finish(self):
        self.write(f'  done in {time.monotonic() - self.start:.1f} s\n')


def write_split(out_dir, split, num_images, seed, progress=None):
    """Draw and write one split's images and its COCO annotation file.

    ``progress``: a :class:`Progress` told of every image written.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(osp.join(out_dir, split), exist_ok=True)
    images, annotations = [], []
    for image_id in range(num_images):
        image, objects = draw_image(rng)
        file_name = f'{image_id:06d}.png'
        with open(osp.join(out_dir, split, file_name), 'wb') as f:
            f.write(encode_png(image))
        if progress is not None:
            progress.step(split, image_id, num_images)
        images.append(dict(id=image_id, file_name=file_name,
                           width=IMAGE_SIZE, height=IMAGE_SIZE))
        for obj in objects:
            annotations.append(
                dict(id=len(annotations) + 1, image_id=image_id,
                     category_id=obj['label'] + 1, bbox=obj['bbox'],
                     area=obj['area'], iscrowd=0))
    coco = dict(
        info=dict(description='mmloss shapes dataset', version=VERSION,
                  seed=seed),
        images=images,
        annotations=annotations,
        categories=[dict(id=i + 1, name=name)
                    for i, name in enumerate(CLASSES)])
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    with open(osp.join(out_dir, 'annotations', f'{split}.json'), 'w') as f:
        json.dump(coco, f, sort_keys=True)


def is_complete(out_dir):
    """Whether ``out_dir`` holds every split of the current version."""
    for split in SPLITS:
        ann_file = osp.join(out_dir, 'annotations', f'{split}.json')
        if not osp.isfile(ann_file):
            return False
        with open(ann_file) as f:
            if json.load(f).get('info', {}).get('version') != VERSION:
                return False
    return True


def make_shapes_dataset(out_dir='data/shapes', force=False, progress=True,
                        stream=None):
    """Write the dataset into ``out_dir`` unless it is already there.

    With ``progress``, reports the images drawn on ``stream`` (stderr).

    The splits are drawn into a temporary folder beside ``out_dir`` which is
    then renamed into place, so a concurrent reader (another test, another
    rank) sees either nothing or the whole dataset.

    Returns:
        str: ``out_dir``.
    """
    out_dir = osp.normpath(out_dir)
    if not force and is_complete(out_dir):
        return out_dir
    parent = osp.dirname(osp.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix='.shapes-', dir=parent)
    report = None
    if progress:
        report = Progress(out_dir, sum(n for n, _ in SPLITS.values()), stream)
    try:
        for split, (num_images, seed) in SPLITS.items():
            write_split(tmp_dir, split, num_images, seed, report)
        if report is not None:
            report.finish()
        if osp.exists(out_dir):
            if not force and is_complete(out_dir):
                return out_dir  # another process finished first
            shutil.rmtree(out_dir, ignore_errors=True)
        try:
            os.rename(tmp_dir, out_dir)
        except OSError:
            if not is_complete(out_dir):
                raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


ensure_shapes_dataset = make_shapes_dataset


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out-dir', default='data/shapes')
    parser.add_argument('--force', action='store_true',
                        help='regenerate even if the dataset is present')
    args = parser.parse_args()
    out_dir = make_shapes_dataset(args.out_dir, force=args.force)
    print(f'shapes dataset ready in {out_dir}')


if __name__ == '__main__':
    main()
