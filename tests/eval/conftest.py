"""Tiny generated datasets in the layouts the evaluation code reads."""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from vader_tf.eval.encoders import FeatureExtractor


def save_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def square_scene(height, width, top, left, size, rng):
    """A noisy blue background with a noisy red square; returns (image, mask)."""
    mask = np.zeros((height, width), np.uint8)
    mask[top : top + size, left : left + size] = 1
    image = np.zeros((height, width, 3), np.float32)
    image[..., 2] = 200
    image[mask == 1] = (200, 0, 0)
    image += rng.normal(0, 10, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def cell_mean(images):
    """Mean of `[B, H, W, C]` images (H, W multiples of 4) over each stride-4 cell's
    footprint: the 4-pixel square centred on the cell centre 4j + 0.5, i.e. pixels
    4j - 2 .. 4j + 2 weighted 0.5, 1, 1, 1, 0.5 per axis (borders mirrored)."""
    taps = tf.constant([0.5, 1.0, 1.0, 1.0, 0.5]) / 4.0
    channels = images.shape[-1]
    kernel = tf.tile((taps[:, None] * taps[None, :])[:, :, None, None], [1, 1, channels, 1])
    padded = tf.pad(images, [[0, 0], [2, 2], [2, 2], [0, 0]], mode="SYMMETRIC")
    return tf.nn.depthwise_conv2d(padded, kernel, [1, 4, 4, 1], "VALID")


@pytest.fixture
def color_extractor():
    """Oracle-like extractor: L2-normalised mean colour (plus a constant) of each cell."""

    def forward(images):
        pooled = cell_mean(images / 255.0)
        features = tf.concat([pooled, 0.1 * tf.ones_like(pooled[..., :1])], axis=-1)
        return tf.math.l2_normalize(features, axis=-1)

    return FeatureExtractor(forward, "oracle:color")


@pytest.fixture
def segmentation_root(tmp_path):
    """`train.txt`/`val.txt` of 4 + 2 images 40x52 with classes 0 (blue), 1 (red square),
    and an ignored border of label 255."""
    rng = np.random.default_rng(0)
    root = tmp_path / "seg"
    for split, count in (("train", 4), ("val", 2)):
        lines = []
        for i in range(count):
            image, mask = square_scene(40, 52, 8 + 2 * i, 10 + 3 * i, 16, rng)
            label = mask.copy()
            label[:2] = 255
            save_png(str(root / split / f"{i}.png"), image)
            save_png(str(root / f"{split}annot" / f"{i}.png"), label)
            lines.append(f"{split}/{i}.png {split}annot/{i}.png")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return str(root)


@pytest.fixture
def davis_root(tmp_path):
    """DAVIS layout with one sequence `square` of 5 frames 72x100, a red square moving
    right by 4 pixels (one feature cell) per frame, aligned with the cells; masks 0/255."""
    rng = np.random.default_rng(1)
    root = tmp_path / "davis"
    for t in range(5):
        image, mask = square_scene(72, 100, 20, 20 + 4 * t, 24, rng)
        frame_path = _make_parent(root / "JPEGImages/480p/square" / f"{t:05d}.jpg")
        Image.fromarray(image).save(frame_path, quality=95)
        save_png(str(root / "Annotations/480p/square" / f"{t:05d}.png"), mask * 255)
    return str(root)


def _make_parent(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return str(path)


def depth_scene(height, width, rng):
    """An image whose red channel encodes depth: depth = 1 + 4 * red / 255 metres, with
    a smooth random red pattern; returns (image uint8, depth in millimetres uint16)."""
    rows, cols = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    phase = rng.uniform(0, 2 * np.pi, 2)
    red = 127.5 * (1 + np.sin(3 * rows + phase[0]) * np.cos(2 * cols + phase[1]))
    image = np.stack([red, np.full_like(red, 60), 255 - red], axis=-1).astype(np.uint8)
    depth_mm = (1000 * (1 + 4 * image[..., 0].astype(np.float64) / 255)).astype(np.uint16)
    depth_mm[:2, :2] = 0  # A few invalid pixels.
    return image, depth_mm


@pytest.fixture
def depth_root(tmp_path):
    """`train.txt`/`val.txt` of 4 + 2 images 64x64 with 16-bit millimetre depth PNGs."""
    rng = np.random.default_rng(2)
    root = tmp_path / "depth"
    for split, count in (("train", 4), ("val", 2)):
        lines = []
        for i in range(count):
            image, depth_mm = depth_scene(64, 64, rng)
            save_png(str(root / split / f"{i}.png"), image)
            save_png(str(root / f"{split}_depth" / f"{i}.png"), depth_mm)
            lines.append(f"{split}/{i}.png {split}_depth/{i}.png")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return str(root)
