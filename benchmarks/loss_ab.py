"""Before/after for a change to the loss: `losses.info_nce` as it was at a git revision
against the working tree's, forward and gradient, interleaved in one process, with the
largest gradient difference and the allocator's peak bytes per logit.

Not part of `run_all.py` (it needs a revision to compare with):

    python -m benchmarks.loss_ab --before=REV [--quick]
"""

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf

from benchmarks import common
from vader_tf import losses

NAME = "loss_ab"
DIM, TEMPERATURE = 128, 0.2


def info_nce_at(revision):
    """`info_nce` from `vader_tf/losses.py` as committed at `revision`."""
    source = subprocess.run(
        ["git", "show", f"{revision}:vader_tf/losses.py"],
        cwd=common.REPO, check=True, capture_output=True, text=True,
    ).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(source)
    try:
        spec = importlib.util.spec_from_file_location("losses_before", f.name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        os.remove(f.name)
    # Its source file is gone by the time it is traced; it has no Python control flow.
    return tf.autograph.experimental.do_not_convert(module.info_nce)


def _loss_and_gradient(info_nce, queries, positives, negatives):
    @tf.function
    def call():
        with tf.GradientTape() as tape:
            tape.watch(queries)
            loss = tf.reduce_mean(info_nce(queries, positives, negatives, TEMPERATURE)["loss"])
        return loss, tape.gradient(loss, queries)

    return call


def peak_bytes(fn):
    """Allocator peak of one call of `fn` above what was allocated before it."""
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    tf.config.experimental.reset_memory_stats("CPU:0")
    common.block(fn())
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] - before


def compare(implementations, rows, queue_size, repeats):
    rng = np.random.default_rng(0)

    def unit(n):
        return tf.math.l2_normalize(tf.constant(rng.normal(size=(n, DIM)), tf.float32), -1)

    queries, positives, negatives = unit(rows), unit(rows), unit(queue_size)
    calls = {
        name: _loss_and_gradient(fn, queries, positives, negatives)
        for name, fn in implementations.items()
    }
    gradients = [calls[name]()[1] for name in ("before", "after")]
    times = common.time_interleaved(calls, warmup=1, repeats=repeats)
    return {
        "rows": rows,
        "queue_size": queue_size,
        "max_gradient_difference": float(tf.reduce_max(tf.abs(gradients[0] - gradients[1]))),
        "median_s": {name: times[name]["median_s"] for name in calls},
        "after_over_before": times["after"]["median_s"] / times["before"]["median_s"],
        "peak_bytes_per_logit": {
            name: peak_bytes(call) / (rows * queue_size) for name, call in calls.items()
        },
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="Git revision of the 'before' loss.")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--results_dir", default=None)
    args = parser.parse_args(argv)
    implementations = {"before": info_nce_at(args.before), "after": losses.info_nce}
    sizes = [(256, 4096)] if args.quick else [(256, 4096), (1024, 16384), (4096, 65536)]
    repeats = 2 if args.quick else 5
    results = {
        "cases": [compare(implementations, rows, k, repeats) for rows, k in sizes],
    }
    config = {"before": args.before, "embedding_dim": DIM, "repeats": repeats}
    path = common.write_result(NAME, config, common.rounded(results), args.quick, args.results_dir)
    print(f"{NAME}: wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
