"""Matched points name the same scene location in both views (coordinate-encoded oracle)."""

import numpy as np
import pytest
import tensorflow as tf

from vader_tf.data import correspondence
from vader_tf.data.pipeline import make_view_pair
from vader_tf.data.views import ViewConfig
from vader_tf.ops.grid import FEATURE_STRIDE, image_to_grid
from vader_tf.ops.sampling import sample_points

NUM_POINTS = 32


def coordinate_image(height, width, scale):
    """Channels 0 and 1 hold each pixel's own centre `scale * (y + 0.5, x + 0.5)`.

    The encoding is linear, so bilinear resizing and average pooling reproduce it exactly
    away from the borders where resizing clamps. `scale` keeps it inside [0, 255], where
    views are clipped.
    """
    y, x = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    return tf.constant(scale * np.stack([y, x, np.zeros_like(y)], axis=-1), tf.float32)


def feature_map(view):
    """What a stride-4 feature cell sees: the encoder centres cell (i, j) on view pixel
    (4i, 4j) (torchvision padding; measured in tests/models/test_grid_alignment.py)."""
    return view[None, ::FEATURE_STRIDE, ::FEATURE_STRIDE]


@tf.function
def scene_coordinates_at_points(image, element_seed, view_config):
    pair = make_view_pair(image, element_seed, view_config, NUM_POINTS, 0.1, 8)
    seen1 = sample_points(feature_map(pair["view1"]), pair["points1"][None])[0, :, :2]
    seen2 = sample_points(feature_map(pair["view2"]), pair["points2"][None])[0, :, :2]
    return seen1, seen2, pair["points1"], pair["points2"], pair["valid"]


@pytest.mark.parametrize(
    "height, width, image_size",
    [(64, 64, 32), (61, 97, 32), (120, 45, 64), (300, 200, 32)],
)
def test_points_see_the_same_scene_location(height, width, image_size):
    scale = 250.0 / max(height, width)
    image = coordinate_image(height, width, scale)
    config = ViewConfig(image_size=image_size).geometric_only()
    last_cell = image_size // FEATURE_STRIDE - 1
    errors, interior, valid_pairs = [], [], 0
    for pair_index in range(60):
        seed = tf.constant([height * width, pair_index], tf.int64)
        seen1, seen2, points1, points2, valid = scene_coordinates_at_points(image, seed, config)
        if not valid:
            continue
        valid_pairs += 1
        errors.append(np.abs(seen1.numpy() - seen2.numpy()).max(axis=-1) / scale)
        # Points that interpolate only between interior feature cells, in both views.
        grids = np.concatenate([points1.numpy(), points2.numpy()], axis=-1)
        interior.append(np.all((grids >= 1) & (grids <= last_cell - 1), axis=-1))
    assert valid_pairs >= 50
    errors, interior = np.concatenate(errors), np.concatenate(interior)
    assert interior.mean() > 0.3
    # Exact (up to float error) wherever the cells read lie inside both views.
    assert errors[interior].max() < 1e-3, errors[interior].max()
    # Border cells of strongly upsampled crops see resize's edge clamping: the error
    # stays below half an original pixel.
    assert errors.max() < 0.5, errors.max()


def test_both_flips_are_exercised_and_points_stay_inside_the_grid():
    config = ViewConfig(image_size=32)
    flips, grid_max = set(), config.image_size / FEATURE_STRIDE - 1
    for pair_index in range(40):
        seed = tf.constant([7, pair_index], tf.int64)
        geometry = correspondence.draw_view_pair(seed, tf.constant([50, 80]), config)
        flips.add(bool(geometry["flip1"]))
        points = correspondence.sample_matched_points(seed, geometry, config.image_size, 16)
        for grid in points:
            assert np.all(grid.numpy() >= -1e-4) and np.all(grid.numpy() <= grid_max + 1e-4)
    assert flips == {True, False}


def test_disjoint_crops_are_rejected():
    size = 32
    left = tf.constant([0, 0, 40, 40])
    right = tf.constant([0, 60, 40, 40])
    touching = tf.constant([0, 39, 40, 40])
    for flip1, flip2 in ((False, False), (True, False), (True, True)):
        assert not correspondence.acceptable_pairs(left, right, flip1, flip2, size, 0.1)
        assert not correspondence.acceptable_pairs(left, touching, flip1, flip2, size, 0.0)
        assert correspondence.acceptable_pairs(left, left, flip1, flip2, size, 0.1)


def test_sampling_region_spans_the_cell_centres_of_both_views():
    # View side 32 from a 64-pixel crop (2 original pixels per view pixel): cell centres
    # of a stride-4 view span view x in [0.5, 28.5], i.e. original [1, 57] from the crop
    # start when unflipped and [7, 63] when flipped (x -> 32 - x).
    box = tf.constant([10, 20, 64, 64])
    for flip, (x_low, x_high) in ((False, (21.0, 77.0)), (True, (27.0, 83.0))):
        low, high = correspondence.sampling_region(box, box, flip, flip, 32)
        np.testing.assert_allclose(low.numpy(), [11.0, x_low])
        np.testing.assert_allclose(high.numpy(), [67.0, x_high])


def test_pair_without_acceptable_overlap_is_flagged_invalid():
    # Requiring more overlap than any pair can have forces the fallback.
    config = ViewConfig(image_size=32)
    seed = tf.constant([0, 3], tf.int64)
    geometry = correspondence.draw_view_pair(seed, tf.constant([64, 64]), config, min_overlap=2.0)
    assert not geometry["valid"]
    points1, points2 = correspondence.sample_matched_points(seed, geometry, 32, 4)
    centre = image_to_grid(16.0)
    np.testing.assert_allclose(points1.numpy(), centre)
    np.testing.assert_allclose(points2.numpy(), centre)
