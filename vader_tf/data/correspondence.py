"""Matched points between two views of one image, in each view's feature grid.

A view pair is acceptable when its *sampling region* is large enough. The sampling region
is the overlap of the two crop boxes shrunk, per view, to the span of that view's
feature-cell centres (`vader_tf.ops.grid`: from `grid_to_image(0)` = 0.5 view pixels to
`S - stride + 0.5`, mirrored in x when the view is flipped), so that every point lies
between feature-cell centres of both views (grid coordinates in `[0, S / stride - 1]`)
and bilinear sampling never extrapolates.

Minimum-overlap rule: the sampling region's area (in original pixels) must be at least
`min_overlap` times the area of the smaller crop (default 0.1), and non-empty. Below that
the matched points would crowd into a sliver of one view. Several candidate pairs are drawn
at once and the first acceptable one is used; if none is, the pair is returned with
`valid=False` (its points are placeholders at the view centres and must be masked out).

The view geometry is the one documented in `vader_tf.data.views`.
"""

import tensorflow as tf

from vader_tf.data import views
from vader_tf.ops.grid import FEATURE_STRIDE, grid_to_image, image_to_grid

DEFAULT_MIN_OVERLAP = 0.1
DEFAULT_NUM_CANDIDATE_PAIRS = 8


def view_margins(image_size, flips, stride=FEATURE_STRIDE):
    """Distances in view pixels from a view's borders to its first and last cell centres.

    Args:
        image_size: view side `S`.
        flips: `[...]` bool, whether each view is flipped left-right.
        stride: feature stride.

    Returns:
        `(before, after)`, each `[..., 2]` float32 (y, x): the margins at the low and high
        end of the *unflipped* view's axes (a flip swaps the x margins).
    """
    first = grid_to_image(0.0, stride)
    last = image_size - grid_to_image(image_size / stride - 1.0, stride)
    flips = tf.convert_to_tensor(flips)[..., None]
    y_axis = tf.constant([True, False])
    before = tf.where(flips & ~y_axis, last, first)
    after = tf.where(flips & ~y_axis, first, last)
    return tf.cast(before, tf.float32), tf.cast(after, tf.float32)


def sampling_region(boxes1, boxes2, flips1, flips2, image_size, stride=FEATURE_STRIDE):
    """Where matched points may be drawn, in original-image coordinates.

    Args:
        boxes1, boxes2: `[..., 4]` crop boxes `(y0, x0, h, w)` of the two views.
        flips1, flips2: `[...]` bool, whether each view is flipped.
        image_size: view side `S`.
        stride: feature stride; points stay between each view's cell centres.

    Returns:
        `(low, high)`, each `[..., 2]` float32 (y, x). Empty when `high <= low`.
    """
    low, high = [], []
    for boxes, flips in ((boxes1, flips1), (boxes2, flips2)):
        boxes = tf.cast(boxes, tf.float32)
        start, extent = boxes[..., :2], boxes[..., 2:]
        before, after = view_margins(image_size, flips, stride)
        low.append(start + before * extent / image_size)
        high.append(start + extent - after * extent / image_size)
    return tf.maximum(*low), tf.minimum(*high)


def acceptable_pairs(
    boxes1, boxes2, flips1, flips2, image_size, min_overlap, stride=FEATURE_STRIDE
):
    """`[...]` bool: the pairs whose sampling region passes the minimum-overlap rule."""
    low, high = sampling_region(boxes1, boxes2, flips1, flips2, image_size, stride)
    extent = high - low
    region_area = tf.reduce_prod(tf.maximum(extent, 0.0), axis=-1)
    crop_areas = [
        tf.cast(boxes[..., 2] * boxes[..., 3], tf.float32) for boxes in (boxes1, boxes2)
    ]
    smaller_crop_area = tf.minimum(*crop_areas)
    non_empty = tf.reduce_all(extent > 0, axis=-1)
    return non_empty & (region_area >= min_overlap * smaller_crop_area)


def draw_view_pair(
    seed,
    image_hw,
    view_config,
    min_overlap=DEFAULT_MIN_OVERLAP,
    num_candidates=DEFAULT_NUM_CANDIDATE_PAIRS,
    stride=FEATURE_STRIDE,
):
    """Draws the geometry of two views: the first acceptable of `num_candidates` pairs.

    Args:
        seed: `[2]` int seed.
        image_hw: `[2]` int tensor, the original image's (height, width).
        view_config: `views.ViewConfig` (crop and flip settings).
        min_overlap: see the module docstring.
        num_candidates: candidate pairs drawn at once.
        stride: feature stride.

    Returns:
        Dict with `box1`, `box2` (`[4]` int32 `(y0, x0, h, w)`), `flip1`, `flip2` (bool)
        and `valid` (bool: the pair passed the minimum-overlap rule).
    """
    boxes = views.sample_crop_boxes(
        tf.random.experimental.stateless_fold_in(seed, 0), image_hw, 2 * num_candidates, view_config
    )
    flips = views.sample_flips(
        tf.random.experimental.stateless_fold_in(seed, 1), 2 * num_candidates, view_config.flip_prob
    )
    boxes1, boxes2 = boxes[:num_candidates], boxes[num_candidates:]
    flips1, flips2 = flips[:num_candidates], flips[num_candidates:]
    ok = acceptable_pairs(
        boxes1, boxes2, flips1, flips2, view_config.image_size, min_overlap, stride
    )
    chosen = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)  # 0 when none is ok.
    return {
        "box1": boxes1[chosen],
        "box2": boxes2[chosen],
        "flip1": flips1[chosen],
        "flip2": flips2[chosen],
        "valid": ok[chosen],
    }


def original_to_view_grid(coords, box, flip, image_size, stride=FEATURE_STRIDE):
    """Original-image (y, x) coordinates `[P, 2]` -> grid coordinates in one view."""
    box = tf.cast(box, tf.float32)
    view_coords = (coords - box[:2]) * image_size / box[2:]
    view_x = tf.where(flip, image_size - view_coords[:, 1], view_coords[:, 1])
    view_coords = tf.stack([view_coords[:, 0], view_x], axis=-1)
    return image_to_grid(view_coords, stride)


def sample_matched_points(seed, geometry, image_size, num_points, stride=FEATURE_STRIDE):
    """Draws `num_points` scene points uniformly in the pair's sampling region.

    Args:
        seed: `[2]` int seed.
        geometry: dict from `draw_view_pair`.
        image_size: view side `S`.
        num_points: points per pair `P`.
        stride: feature stride.

    Returns:
        `(points1, points2)`: `[P, 2]` float32 (y, x) grid coordinates of the same scene
        points in view 1 and view 2. For invalid pairs both are the views' centre point.
    """
    low, high = sampling_region(
        geometry["box1"], geometry["box2"], geometry["flip1"], geometry["flip2"], image_size, stride
    )
    fraction = tf.random.stateless_uniform([num_points, 2], seed=seed)
    scene_points = low + fraction * (high - low)
    centre = image_to_grid(tf.fill([num_points, 2], image_size / 2.0), stride)
    points = []
    for box, flip in (("box1", "flip1"), ("box2", "flip2")):
        grid = original_to_view_grid(
            scene_points, geometry[box], geometry[flip], image_size, stride
        )
        points.append(tf.where(geometry["valid"], grid, centre))
    return tuple(points)
