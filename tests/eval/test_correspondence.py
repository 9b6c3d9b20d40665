"""Warps follow the continuous-coordinate convention; an oracle matches accurately."""

import numpy as np
import tensorflow as tf

from vader_tf.eval import correspondence
from vader_tf.eval.encoders import FeatureExtractor
from vader_tf.eval.protocols import CorrespondenceProtocol


def test_flip_and_integer_shift_warps_are_exact():
    image = np.random.default_rng(0).uniform(0, 255, (8, 12, 3)).astype(np.float32)
    flip = np.array([[-1.0, 0, 12], [0, 1, 0], [0, 0, 1]])  # x_source = W - x_target
    np.testing.assert_allclose(correspondence.warp_image(image, flip), image[:, ::-1], atol=1e-3)
    shift = np.array([[1.0, 0, 2], [0, 1, 1], [0, 0, 1]])  # source = target + (2, 1)
    np.testing.assert_allclose(
        correspondence.warp_image(image, shift)[:-1, :-2], image[1:, 2:], atol=1e-3
    )


def test_homography_from_points_maps_corners():
    rng = np.random.default_rng(0)
    matrix = correspondence.random_homography(64, 96, rng, (0.6, 1.0), perspective=0.1, flip=True)
    corners_yx = np.array([[0, 0], [0, 96], [64, 96], [64, 0]], np.float64)
    mapped = correspondence.apply_homography(matrix, corners_yx)
    back = correspondence.apply_homography(np.linalg.inv(matrix), mapped)
    np.testing.assert_allclose(back, corners_yx, atol=1e-6)
    # Flipped: the target's top-left corner comes from the right half of the source.
    assert mapped[0, 1] > 48


def _position_extractor():
    """Features that encode the colour, which the test images set to the position."""

    def forward(images):
        pooled = tf.nn.avg_pool2d(images / 255.0, 4, 4, "VALID")[..., :2] * np.pi
        codes = [f(frequency * pooled) for frequency in (1.0, 4.0) for f in (tf.cos, tf.sin)]
        return tf.math.l2_normalize(tf.concat(codes, axis=-1), axis=-1)

    return FeatureExtractor(forward, "oracle:position")


def test_position_oracle_matches_within_a_few_pixels():
    rows, cols = np.meshgrid(np.arange(64), np.arange(96), indexing="ij")
    image = np.stack([cols / 96 * 255, rows / 64 * 255, np.full_like(rows, 128.0)], axis=-1)
    results = correspondence.evaluate_correspondence(
        _position_extractor(),
        [image.astype(np.float32)] * 2,
        CorrespondenceProtocol(thresholds=(3, 8), point_stride=1),
    )
    assert results["num_pairs"] == 4
    for kind in ("crop_flip", "homography", "all"):
        assert results[kind]["num_points"] > 100
        assert results[kind]["pck@8"] > 0.9, (kind, results[kind])
