"""The one place that says where a feature cell lies in input pixels.

Coordinates are continuous, in (y, x) order, with pixel ``k`` covering ``[k, k + 1)``
so its centre is at ``k + 0.5``. Cell ``j`` of a dense map of stride ``s`` is centred at
input coordinate ``s * j + 0.5``: on the centre of input pixel ``s * j``.

That is where the encoder puts it. The ResNet backbone pads like torchvision (a 7x7/2
convolution with padding 3, a 3x3/2 max-pool with padding 1, 3x3/2 and 1x1/2 convolutions
with padding 1 and 0), so every stride-2 layer centres its output ``j`` on its input
``2 * j``; by induction level ``P_l`` (stride ``s = 2**l``) centres cell ``j`` on input pixel
``s * j``. Other backbones are accepted only where this holds
(`vader_tf.models.backbone.check_pyramid`). The decoder upsamples with `resize_grid`,
which keeps that relation exact, so every pathway of the FPN, and the encoder's stride-4
output, centres cell ``j`` at ``4 * j + 0.5``. `tests/models/test_grid_alignment.py`
measures this on the network (receptive-field centres and flip probes).

Consequences used across the library:

- A map of ``n`` cells covers input coordinates ``[0.5, s * (n - 1) + 0.5]`` with its cell
  centres; a stride-``s`` map of an input of side ``L`` has ``ceil(L / s)`` cells.
- Flipping an input of side ``L`` maps cell ``j`` (at ``s * j + 0.5``) to the continuous
  position ``L - s * j - 0.5``, which is cell ``(L - 1) / s - j`` of the flipped map:
  not an integer, so the features of a flipped view sit ``(s - 1) / s`` cells away from the
  mirrored features. Correspondences are computed in continuous coordinates and are exact.
- Resizing a dense map between strides uses `resize_grid`, upsampling it to every input
  pixel `upsample_to_pixels`; pooling pixel maps (labels, depths) onto the grid uses
  `pool_to_grid`. Image resizes of views and frames are a separate matter: they use
  half-pixel centres, exact in the same continuous coordinates (`vader_tf.data.views`).

"Grid coordinates" are the fractional cell indices used to sample a dense map: grid
coordinate ``g`` is cell ``g`` exactly when ``g`` is an integer, and linearly in between.
Correspondences, feature sampling, evaluation and export all use these functions.
"""

import numpy as np
import tensorflow as tf

FEATURE_STRIDE = 4


def image_to_grid(coords, stride=FEATURE_STRIDE):
    """Continuous input-pixel coordinates -> grid coordinates of a stride-`stride` map."""
    return (coords - 0.5) / stride


def grid_to_image(grid_coords, stride=FEATURE_STRIDE):
    """Grid coordinates of a stride-`stride` map -> continuous input-pixel coordinates."""
    return grid_coords * stride + 0.5


def resize_grid(maps, size):
    """Bilinearly resizes `[B, h, w, C]` dense maps to `size` (run-time `[2]` ints).

    Output index `i` reads input grid coordinate `i * h / size[0]` (likewise along x):
    when the two maps cover the same input at strides `s_in` and `s_out` (`s_in / s_out =
    size / h`), that is exactly ``image_to_grid(grid_to_image(i, s_out), s_in)``, so cell
    centres stay on the convention (the last `s_in / s_out - 1` outputs, past the last
    input centre, repeat the border). `tf.image.resize` (half-pixel centres) would shift
    the result by `(s_in - s_out) / 2` input pixels. Works with dynamic shapes and
    converts to the TFLite builtin RESIZE_BILINEAR. Returns the dtype of `maps`.
    """
    resized = tf.raw_ops.ResizeBilinear(
        images=maps, size=size, align_corners=False, half_pixel_centers=False
    )
    return tf.cast(resized, maps.dtype)


def upsample_to_pixels(maps, size, stride=FEATURE_STRIDE):
    """`[B, h, w, C]` stride-`stride` maps of inputs of `size = (H, W)` -> `[B, H, W, C]`
    bilinear values at every input pixel's centre (`h = ceil(H / stride)`, likewise w).

    Resizes by exactly `stride` with `resize_grid` (pixel `k` reads grid coordinate
    `image_to_grid(k + 0.5)`) and crops to `size`; returns float32.
    """
    shape = tf.shape(maps)
    resized = resize_grid(tf.cast(maps, tf.float32), stride * shape[1:3])
    return resized[:, : size[0], : size[1]]


def pooling_weights(num_pixels, stride=FEATURE_STRIDE, num_cells=None):
    """`[num_cells, num_pixels]` area weights of input pixels in each cell's footprint.

    Cell `j`'s footprint is the length-`stride` interval centred on its centre,
    ``grid_to_image(j) +- stride / 2``; the weight of pixel `k` is the length of its
    overlap with ``[k, k + 1)``. Rows of border cells, whose footprint sticks out of the
    input, sum to less than `stride`. `num_cells` defaults to `ceil(num_pixels / stride)`.
    """
    if num_cells is None:
        num_cells = -(-num_pixels // stride)
    centres = grid_to_image(np.arange(num_cells, dtype=np.float64), stride)[:, None]
    pixels = np.arange(num_pixels, dtype=np.float64)[None, :]
    right = np.minimum(pixels + 1, centres + stride / 2)
    return np.maximum(right - np.maximum(pixels, centres - stride / 2), 0.0)


def pool_to_grid(maps, stride=FEATURE_STRIDE, num_cells=None):
    """Area sums of `[H, W, ...]` pixel maps over each cell's footprint (`pooling_weights`).

    Returns `[h, w, ...]` float64 sums (divide by `pool_to_grid` of ones, or of a validity
    mask, for means). `num_cells` is an optional `(h, w)`; default `ceil(H / stride)` by
    `ceil(W / stride)`.
    """
    maps = np.asarray(maps, np.float64)
    cells_h, cells_w = num_cells if num_cells is not None else (None, None)
    rows = pooling_weights(maps.shape[0], stride, cells_h)
    cols = pooling_weights(maps.shape[1], stride, cells_w)
    pooled = np.tensordot(rows, maps, axes=(1, 0))  # [h, W, ...]
    return np.moveaxis(np.tensordot(cols, pooled, axes=(1, 1)), 0, 1)


def declare_grid(strides):
    """Where the cells of named dense outputs lie, as exports and configs declare it.

    Args:
        strides: `{name: stride}` of dense maps of the same input.

    Returns:
        `{name: {"stride": s, "cell_centre": [y, x]}}`, with the input coordinates of the
        centre of cell (0, 0) (`grid_to_image(0, s)` along each axis; cell (i, j) is then
        at `[y + s * i, x + s * j]`), in the convention of this module: pixel `k` covers
        `[k, k + 1)`. JSON-serialisable.
    """
    return {
        name: {"stride": int(stride), "cell_centre": [float(grid_to_image(0.0, stride))] * 2}
        for name, stride in strides.items()
    }
