"""Pictures of dense features: PCA to RGB, and cosine similarity to one point.

Both return uint8 RGB images at feature resolution; `upsample_nearest` enlarges them to
the input size (each pixel takes the value of its nearest cell centre, per
`vader_tf.ops.grid`), and `save_png`
writes a PNG atomically (temporary file + rename).
"""

import io

import numpy as np
from PIL import Image

from vader_tf import storage
from vader_tf.ops.grid import FEATURE_STRIDE, image_to_grid


def pca_rgb(features):
    """First three principal components of `[h, w, D]` features as uint8 `[h, w, 3]`
    (each component min-max scaled to 0..255)."""
    flat = features.reshape(-1, features.shape[-1]).astype(np.float64)
    centred = flat - flat.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ components[:3].T
    if projected.shape[1] < 3:
        projected = np.pad(projected, ((0, 0), (0, 3 - projected.shape[1])))
    low, high = projected.min(axis=0), projected.max(axis=0)
    scaled = (projected - low) / np.maximum(high - low, 1e-12)
    return (255 * scaled).round().astype(np.uint8).reshape(*features.shape[:2], 3)


def similarity_map(features, point_yx):
    """Cosine similarity of every cell of `[h, w, D]` features to the cell containing the
    input-pixel position `point_yx`; `[h, w]` float in [-1, 1]."""
    height, width = features.shape[:2]
    row, col = np.round(image_to_grid(np.asarray(point_yx, np.float64))).astype(int)
    row, col = np.clip(row, 0, height - 1), np.clip(col, 0, width - 1)
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    unit = features / np.maximum(norms, 1e-12)
    return unit @ unit[row, col]


def similarity_rgb(similarity):
    """`[h, w]` similarities in [-1, 1] as a blue (-1) / white (0) / red (+1) image."""
    s = np.clip(similarity, -1.0, 1.0)[..., None]
    white = np.ones(3)
    red, blue = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])
    rgb = np.where(s >= 0, white + s * (red - white), white - s * (blue - white))
    return (255 * rgb).round().astype(np.uint8)


def nearest_cells(num_pixels, num_cells, stride=FEATURE_STRIDE):
    """Index of the cell whose centre is nearest each of `num_pixels` pixel centres."""
    grid = image_to_grid(np.arange(num_pixels) + 0.5, stride)
    return np.clip(np.floor(grid + 0.5).astype(int), 0, num_cells - 1)


def upsample_nearest(picture, stride=FEATURE_STRIDE):
    """An `[h, w, C]` picture enlarged `stride` times, each pixel showing its nearest cell."""
    height, width = picture.shape[:2]
    rows = nearest_cells(stride * height, height, stride)
    cols = nearest_cells(stride * width, width, stride)
    return picture[rows][:, cols]


def save_png(path, picture):
    """Writes a uint8 `[H, W, 3]` picture to `path` as PNG, atomically."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    storage.write_atomic(path, buffer.getvalue())
