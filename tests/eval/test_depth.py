"""Depth probe on generated data whose depth is a known function of the colour."""

import numpy as np
import pytest
import tensorflow as tf

from tests.eval.conftest import cell_mean
from vader_tf.data.segmentation import load_segmentation_split
from vader_tf.eval import depth
from vader_tf.eval.encoders import FeatureExtractor
from vader_tf.eval.protocols import DepthProtocol


def _log_depth_oracle():
    """Features linear in the cell's mean log depth, computed from the red channel
    (depth = 1 + 4 * red / 255, see `conftest.depth_scene`)."""

    def forward(images):
        log_depth = tf.math.log(1.0 + 4.0 * images[..., :1] / 255.0)
        pooled = cell_mean(log_depth)
        return tf.concat([pooled, tf.ones_like(pooled)], axis=-1)

    return FeatureExtractor(forward, "oracle:log_depth")


def test_cell_log_depth_ignores_invalid_pixels():
    # Stride 2: cell j is centred at 2j + 0.5, its footprint [2j - 0.5, 2j + 1.5) weighs
    # pixels 2j - 1, 2j, 2j + 1 by 0.5, 1, 0.5 (per axis).
    depth_map = np.array([[1.0, 0.0, 2.0, 2.0], [np.e, 0.0, 2.0, 2.0]])
    depth_map = np.concatenate([depth_map, np.zeros((4, 4))])
    values, valid = depth.cell_log_depth(depth_map, stride=2)
    # Cell (0, 0): log 1 = 0 with weight 1 (pixel 0, 0), log e = 1 with weight 0.5.
    np.testing.assert_allclose(values[0], [1.0 / 3.0, np.log(2.0)], rtol=1e-6)
    # Cell row 1 reaches back to pixel row 1 (weight 0.5) only.
    np.testing.assert_allclose(values[1], [1.0, np.log(2.0)], rtol=1e-6)
    np.testing.assert_array_equal(valid, [[True, True], [True, True], [False, False]])


def test_probe_recovers_depth_from_an_oracle(depth_root):
    images, depth_mm = load_segmentation_split(depth_root, "train", 64)
    val_images, val_depth_mm = load_segmentation_split(depth_root, "val", 64)
    assert depth_mm.dtype == np.uint16
    results = depth.run_depth_probe(
        _log_depth_oracle(),
        images,
        depth.depths_in_metres(depth_mm),
        val_images,
        depth.depths_in_metres(val_depth_mm),
        DepthProtocol(steps=300, batch_size=256, learning_rate=0.05),
    )
    assert results["num_images"] == 2
    assert results["delta1"] > 0.99, results
    assert results["abs_rel"] < 0.03, results


def test_unprepared_tfds_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not prepared"):
        depth.load_nyu_depth_v2("validation", 64, data_dir=str(tmp_path))
