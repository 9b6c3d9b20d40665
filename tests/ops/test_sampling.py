"""Feature sampling at fractional grid positions, and the grid convention."""

import numpy as np
import pytest

from tests.training import reference
from vader_tf.ops.grid import grid_to_image, image_to_grid
from vader_tf.ops.sampling import sample_points


def test_bilinear_matches_numpy_reference_including_clamped_borders():
    rng = np.random.default_rng(0)
    feature_map = rng.normal(size=(2, 5, 7, 3)).astype("float32")
    points = rng.uniform(-1.0, 8.0, size=(2, 40, 2)).astype("float32")
    sampled = sample_points(feature_map, points).numpy()
    for b in range(2):
        np.testing.assert_allclose(sampled[b], reference.bilinear(feature_map[b], points[b]), atol=1e-5)


def test_integer_points_read_cells_exactly_for_both_methods():
    feature_map = np.arange(2 * 4 * 6 * 2, dtype="float32").reshape(2, 4, 6, 2)
    points = np.array([[[0, 0], [3, 5], [2, 1]], [[1, 4], [0, 5], [3, 0]]], "float32")
    for method in ("bilinear", "nearest"):
        sampled = sample_points(feature_map, points, method).numpy()
        for b in range(2):
            expected = feature_map[b, points[b, :, 0].astype(int), points[b, :, 1].astype(int)]
            np.testing.assert_array_equal(sampled[b], expected)


def test_nearest_rounds_to_the_closest_cell():
    feature_map = np.arange(16, dtype="float32").reshape(1, 4, 4, 1)
    sampled = sample_points(feature_map, np.array([[[1.4, 2.6]]], "float32"), "nearest")
    assert float(sampled[0, 0, 0]) == feature_map[0, 1, 3, 0]


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="bicubic"):
        sample_points(np.zeros((1, 2, 2, 1), "float32"), np.zeros((1, 1, 2), "float32"), "bicubic")


def test_grid_convention_cell_centres():
    # Cell j of a stride-s map is centred on input pixel s * j, at s * j + 0.5.
    np.testing.assert_allclose(image_to_grid(np.array([0.5, 4.5, 2.5])), [0.0, 1.0, 0.5])
    np.testing.assert_allclose(grid_to_image(np.array([0.0, 2.0])), [0.5, 8.5])
    np.testing.assert_allclose(grid_to_image(image_to_grid(np.array([3.3, 17.0]))), [3.3, 17.0])
    np.testing.assert_allclose(image_to_grid(np.array([16.5]), stride=8), [2.0])
