"""DAVIS label propagation per frame: the block-by-block search with a radius
(`vader_tf.eval.label_propagation.propagate_frame`, tiles of 8 and 16 cells) against a
search over the whole frame under an `[h*w, h*w]` radius mask (the method before the
tiles, written out here as the baseline). Random L2-normalised 128-d features, 4
reference frames (the first frame and 3 context frames), top-10, radius 12 cells: the
DAVIS protocol's settings, at the study's 192 px frames (48x86 cells) and DAVIS 480p
(120x214 cells). The baseline's mask is built once per frame size, outside the timing
(as it was cached). Reports seconds per frame, the speed-up over the baseline and the
largest difference of the outputs (0 when bit-identical).

    python -m benchmarks.label_propagation [--quick]
"""

import numpy as np
import tensorflow as tf

from benchmarks import common
from vader_tf.eval.label_propagation import propagate_frame

NAME = "label_propagation"
TOPK, TEMPERATURE, RADIUS, REFERENCES, DEPTH = 10, 0.07, 12, 4, 128


def radius_mask(height, width):
    """`[h*w, h*w]` bool: True where two cells are more than the radius apart (built once
    per frame size, as the baseline cached it)."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    positions = np.stack([rows.ravel(), cols.ravel()], -1).astype(np.float32)
    return tf.constant(((positions[:, None] - positions[None]) ** 2).sum(-1) > RADIUS**2)


@tf.function(reduce_retracing=True)
def _full_search_chunk(queries, keys, values, too_far):
    affinity = tf.matmul(queries, keys, transpose_b=True)
    shape = tf.shape(affinity)
    affinity = tf.reshape(affinity, [shape[0], -1, tf.shape(too_far)[1]])
    affinity = tf.where(too_far[:, None, :], tf.constant(-np.inf, tf.float32), affinity)
    top, indices = tf.math.top_k(tf.reshape(affinity, shape), k=TOPK)
    weights = tf.nn.softmax(top / TEMPERATURE, axis=-1)
    return tf.einsum("qk,qkc->qc", weights, tf.gather(values, indices))


def full_search(query, references, labels, too_far, chunk_size=1024):
    """Every query cell against every reference cell, the far ones masked to -inf."""
    height, width, depth = query.shape
    queries = tf.reshape(query, [-1, depth])
    keys = tf.reshape(references, [-1, depth])
    values = tf.reshape(labels, [keys.shape[0], -1])
    outputs = [
        _full_search_chunk(
            queries[start : start + chunk_size], keys, values, too_far[start : start + chunk_size]
        )
        for start in range(0, height * width, chunk_size)
    ]
    return tf.reshape(tf.concat(outputs, 0), [height, width, -1]).numpy()


def unit(rng, shape):
    features = rng.normal(size=shape).astype(np.float32)
    return features / np.linalg.norm(features, axis=-1, keepdims=True)


def run(quick):
    grids = (
        {"quick_12x20": (12, 20)}
        if quick
        else {"study_48x86": (48, 86), "davis480_120x214": (120, 214)}
    )
    rng = np.random.default_rng(0)
    results = {}
    for grid, (height, width) in grids.items():
        query = unit(rng, (height, width, DEPTH))
        references = unit(rng, (REFERENCES, height, width, DEPTH))
        labels = rng.dirichlet(np.ones(2), size=(REFERENCES, height, width)).astype(np.float32)
        too_far = radius_mask(height, width)
        callables = {
            "full_search": lambda: full_search(query, references, labels, too_far),
            **{
                f"tiles_{tile}": (
                    lambda tile=tile: propagate_frame(
                        query, references, labels, TOPK, TEMPERATURE, RADIUS, tile=tile
                    )
                )
                for tile in (8, 16)
            },
        }
        outputs = {name: fn() for name, fn in callables.items()}
        times = common.time_interleaved(callables, warmup=1, repeats=2 if quick else 3)
        baseline = times["full_search"]["median_s"]
        results[grid] = {
            "cells": height * width,
            "seconds_per_frame": {name: times[name]["median_s"] for name in callables},
            "speedup_over_full_search": {
                name: baseline / times[name]["median_s"] for name in callables
            },
            "max_abs_difference": {
                name: float(np.abs(outputs[name] - outputs["full_search"]).max())
                for name in callables
            },
        }
    config = dict(
        topk=TOPK, temperature=TEMPERATURE, radius=RADIUS, references=REFERENCES, depth=DEPTH
    )
    return config, results


if __name__ == "__main__":
    common.main(NAME, run, __doc__)
