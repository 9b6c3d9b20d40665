"""Moving dense maps between strides and pixels keeps cell centres at s * j + 0.5.

Oracles are coordinate-encoded maps: each cell (or pixel) holds its own centre, written
out in NumPy, so an exact resampling reproduces the centres of the output cells.
"""

import numpy as np
import tensorflow as tf

from vader_tf.eval.linear_probe import majority_downsample
from vader_tf.eval.visualize import upsample_nearest
from vader_tf.ops.grid import pool_to_grid, resize_grid, upsample_to_pixels


def centres_map(height, width, stride):
    """`[1, height, width, 2]` map whose cell (i, j) holds (stride*i + 0.5, stride*j + 0.5)."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([stride * rows + 0.5, stride * cols + 0.5], axis=-1)[None].astype("float32")


def test_resize_grid_maps_cell_centres_onto_cell_centres():
    for stride_in, cells in ((8, (3, 5)), (32, (2, 3))):
        ratio = stride_in // 4
        size = (cells[0] * ratio, cells[1] * ratio)
        resized = resize_grid(tf.constant(centres_map(*cells, stride_in)), size).numpy()
        expected = centres_map(*size, 4)
        # Exact up to the last input centre; beyond it the border cell is repeated.
        last = (stride_in * (cells[0] - 1) + 0.5, stride_in * (cells[1] - 1) + 0.5)
        np.testing.assert_allclose(resized, np.minimum(expected, last), atol=1e-4)


def test_resize_grid_keeps_the_dtype_and_takes_run_time_sizes():
    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 2], tf.float16)])
    def upsample(maps):
        return resize_grid(maps, 2 * tf.shape(maps)[1:3])

    out = upsample(tf.constant(centres_map(2, 3, 8), tf.float16))
    assert out.dtype == tf.float16 and out.shape == (1, 4, 6, 2)


def test_upsample_to_pixels_reads_every_pixel_centre():
    maps = tf.constant(centres_map(3, 4, 4))  # Stride-4 grid of a 10 x 15 input.
    pixels = upsample_to_pixels(maps, (10, 15)).numpy()
    expected = centres_map(10, 15, 1)
    np.testing.assert_allclose(pixels, np.minimum(expected, (8.5, 12.5)), atol=1e-5)


def test_pool_to_grid_averages_over_footprints_centred_on_the_cells():
    pixels = centres_map(10, 16, 1)[0]
    sums = pool_to_grid(pixels, 4)
    weights = pool_to_grid(np.ones((10, 16)), 4)
    assert sums.shape == (3, 4, 2) and weights.shape == (3, 4)
    # Footprint of cell j: [4j - 1.5, 4j + 2.5). Interior cells keep all 4 x 4 of it;
    # cell 0 loses [-1.5, 0); cell row 2 ([6.5, 10.5)) loses [10, 10.5).
    np.testing.assert_allclose(weights[1, 1:3], 16.0)
    np.testing.assert_allclose(weights[0, 0], 2.5 * 2.5)
    np.testing.assert_allclose(weights[2, 3], 3.5 * 4.0)
    means = sums[1:2, 1:3] / weights[1:2, 1:3, None]
    np.testing.assert_allclose(means, centres_map(3, 4, 4)[0, 1:2, 1:3], atol=1e-9)


def test_majority_downsample_votes_over_the_footprint():
    label = np.zeros((8, 8), np.int64)
    label[:, 2:5] = 1
    label[:, 7] = 255  # Ignored.
    # Cell column 1 (footprint [2.5, 6.5)): class 1 has weight 0.5 + 1 + 1, class 0 has
    # 1 + 0.5. (A block [4, 8) would have voted 0.)
    cells = majority_downsample(label, num_classes=2, ignore_label=255)
    np.testing.assert_array_equal(cells, [[0, 1]] * 2)
    label[:, :] = 255
    np.testing.assert_array_equal(majority_downsample(label, 2, 255), [[255, 255]] * 2)


def test_upsample_nearest_shows_the_nearest_cell_centre():
    picture = np.arange(3)[None, :, None]
    # Pixel k (centre k + 0.5) is nearest cell round(k / 4): pixels 0-1 -> 0, 2-5 -> 1, ...
    expected = [0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]
    np.testing.assert_array_equal(upsample_nearest(picture)[0, :, 0], expected)
