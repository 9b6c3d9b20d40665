"""The one place that says where a feature cell lies in input pixels.

Coordinates are continuous, in (y, x) order, with pixel ``k`` covering ``[k, k + 1)``
so its centre is at ``k + 0.5``. A dense map of stride ``s`` has cell ``j`` covering input
pixels ``[s * j, s * (j + 1))``; its centre is input coordinate ``s * (j + 0.5)``.

"Grid coordinates" are the fractional cell indices used to sample a dense map: grid
coordinate ``g`` is cell ``g`` exactly when ``g`` is an integer, and linearly in between.
Correspondences, feature sampling, evaluation and export all use these two functions.
"""

FEATURE_STRIDE = 4


def image_to_grid(coords, stride=FEATURE_STRIDE):
    """Continuous input-pixel coordinates -> grid coordinates of a stride-`stride` map."""
    return coords / stride - 0.5


def grid_to_image(grid_coords, stride=FEATURE_STRIDE):
    """Grid coordinates of a stride-`stride` map -> continuous input-pixel coordinates."""
    return (grid_coords + 0.5) * stride
