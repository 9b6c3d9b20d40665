"""Loss scaling: time and peak memory of point sampling + pixel InfoNCE (forward and
gradient with respect to the feature maps) as points per image P and queue size K grow.

The loss forms `[N, 1 + K]` logits for N = 2 x batch x P rows (both directions), so time
and memory should grow linearly in P x K. A least-squares line over the grid says how
well they do: slope, intercept and R^2.

Peak memory is TensorFlow's CPU allocator peak (`tf.config.experimental.get_memory_info`)
during one call, above what was allocated before it.

    python -m benchmarks.loss_scaling [--quick]
"""

import itertools

import numpy as np
import tensorflow as tf

from benchmarks import common
from vader_tf import losses
from vader_tf.ops.sampling import sample_points
from vader_tf.training import queue as queue_lib

NAME = "loss_scaling"
BATCH, GRID, DIM, TEMPERATURE = 2, 24, 128, 0.2


@tf.function
def sampled_info_nce(query_map, key_map, points, negatives):
    """Both-direction pixel InfoNCE at `points`; returns its gradient w.r.t. `query_map`."""
    def unit(feature_map, at):
        return tf.reshape(tf.math.l2_normalize(sample_points(feature_map, at), axis=-1), [-1, DIM])

    other = points[..., ::-1]  # Stands in for the other view's points: (y, x) swapped.
    with tf.GradientTape() as tape:
        tape.watch(query_map)
        queries = tf.concat([unit(query_map, points), unit(query_map, other)], 0)
        positives = tf.concat([unit(key_map, other), unit(key_map, points)], 0)
        rows = losses.info_nce(queries, positives, negatives, TEMPERATURE)
        loss = tf.reduce_mean(rows["loss"])
    return tape.gradient(loss, query_map)


def measure(points_per_image, queue_size, repeats):
    rng = np.random.default_rng(0)
    query_map = tf.constant(rng.normal(size=(BATCH, GRID, GRID, DIM)), tf.float32)
    key_map = tf.constant(rng.normal(size=(BATCH, GRID, GRID, DIM)), tf.float32)
    points = tf.constant(rng.uniform(0, GRID - 1, (BATCH, points_per_image, 2)), tf.float32)
    negatives = queue_lib.random_unit_rows((queue_size, DIM))

    def call():
        return sampled_info_nce(query_map, key_map, points, negatives)

    times = common.time_interleaved({"loss": call}, warmup=1, repeats=repeats)["loss"]
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    tf.config.experimental.reset_memory_stats("CPU:0")
    common.block(call())
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"] - before
    return {
        "points_per_image": points_per_image,
        "queue_size": queue_size,
        "rows": 2 * BATCH * points_per_image,
        "median_s": times["median_s"],
        "peak_bytes": int(peak),
    }


def linear_fit(x, y):
    """Least-squares `y = intercept + slope * x` and its R^2."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    r_squared = 1.0 - np.sum(residual**2) / np.sum((y - y.mean()) ** 2)
    return {"slope": slope, "intercept": intercept, "r_squared": r_squared}


def run(quick):
    if quick:
        point_counts, queue_sizes, repeats = (16, 64), (4096, 8192), 2
    else:
        point_counts, queue_sizes, repeats = (16, 64, 256, 1024), (4096, 16384, 65536), 3
    grid = [
        measure(p, k, repeats) for p, k in itertools.product(point_counts, queue_sizes)
    ]
    rows_times_queue = [g["rows"] * g["queue_size"] for g in grid]
    largest = max(grid, key=lambda g: g["rows"] * g["queue_size"])
    largest_logits = largest["rows"] * largest["queue_size"]
    results = {
        "grid": grid,
        "time_vs_rows_x_queue": linear_fit(rows_times_queue, [g["median_s"] for g in grid]),
        "memory_vs_rows_x_queue": linear_fit(rows_times_queue, [g["peak_bytes"] for g in grid]),
        # Bytes per logit at the largest size: 4 would be one float32 [N, K] matrix.
        "bytes_per_logit_largest": largest["peak_bytes"] / largest_logits,
        "ns_per_logit_largest": 1e9 * largest["median_s"] / largest_logits,
    }
    settings = {
        "batch": BATCH,
        "feature_grid": GRID,
        "embedding_dim": DIM,
        "points_per_image": list(point_counts),
        "queue_sizes": list(queue_sizes),
        "repeats": repeats,
    }
    return settings, results


if __name__ == "__main__":
    common.main(NAME, run, __doc__)
