"""Sampling dense feature maps at fractional grid positions (see `vader_tf.ops.grid`)."""

import tensorflow as tf


def sample_points(feature_map, points, method="bilinear"):
    """Reads a dense map at per-image point lists.

    Args:
        feature_map: `[B, h, w, C]` tensor.
        points: `[B, P, 2]` float tensor of (y, x) grid coordinates. Positions outside
            `[0, h - 1] x [0, w - 1]` are clamped to the border.
        method: `"bilinear"` or `"nearest"`.

    Returns:
        `[B, P, C]` tensor with the dtype of `feature_map`.
    """
    if method not in ("bilinear", "nearest"):
        raise ValueError(f"method must be 'bilinear' or 'nearest', got {method!r}")
    shape = tf.shape(feature_map)
    h, w = shape[1], shape[2]
    points = tf.cast(points, tf.float32)
    max_y = tf.cast(h - 1, tf.float32)
    max_x = tf.cast(w - 1, tf.float32)
    y = tf.clip_by_value(points[..., 0], 0.0, max_y)
    x = tf.clip_by_value(points[..., 1], 0.0, max_x)
    if method == "nearest":
        iy = tf.cast(tf.round(y), tf.int32)
        ix = tf.cast(tf.round(x), tf.int32)
        return tf.gather_nd(feature_map, tf.stack([iy, ix], axis=-1), batch_dims=1)

    y0 = tf.floor(y)
    x0 = tf.floor(x)
    wy = y - y0
    wx = x - x0
    y0 = tf.cast(y0, tf.int32)
    x0 = tf.cast(x0, tf.int32)
    y1 = tf.minimum(y0 + 1, h - 1)
    x1 = tf.minimum(x0 + 1, w - 1)
    # One gather for the four neighbours: [B, 4P, 2] indices.
    corners = tf.concat(
        [tf.stack(c, axis=-1) for c in ((y0, x0), (y0, x1), (y1, x0), (y1, x1))], axis=1
    )
    values = tf.gather_nd(feature_map, corners, batch_dims=1)
    v00, v01, v10, v11 = tf.split(values, 4, axis=1)
    dtype = feature_map.dtype
    wy = tf.cast(wy, dtype)[..., None]
    wx = tf.cast(wx, dtype)[..., None]
    top = v00 + (v01 - v00) * wx
    bottom = v10 + (v11 - v10) * wx
    return top + (bottom - top) * wy
