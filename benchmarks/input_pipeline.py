"""Input pipeline: image pairs per second of `two_view_dataset` alone on the embedded
sample photos (decode, crops, photometric augmentation, correspondences) against the
pairs per second of the VADeR train step it feeds, in one process.

Also measured, to show where the pipeline's time goes: decoding alone (images/s) and the
augmentation alone, on images decoded once and cached.

    python -m benchmarks.input_pipeline [--quick]
"""

import statistics
import time

import tensorflow as tf

from benchmarks import common
from vader_tf.data import correspondence, pipeline, sources
from vader_tf.training.pretrain import view_config

NAME = "input_pipeline"
TARGET_RATIO = 10.0


def elements_per_second(dataset, elements_per_item, items, warmup_items, repeats):
    """Median rate of a dataset's elements, consumed in bursts of `items` items."""
    iterator = iter(dataset)
    for _ in range(warmup_items):
        next(iterator)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(items):
            common.block(next(iterator))
        rates.append(items * elements_per_item / (time.perf_counter() - start))
    return statistics.median(rates)


def run(quick):
    if quick:
        fields, items, repeats = dict(image_size=64, batch_size=4), 3, 2
    else:
        fields, items, repeats = dict(image_size=96, batch_size=16), 10, 5
    config, model = common.training_model(**fields)
    source = sources.samples_source()
    views = view_config(config)
    batch = config.batch_size
    full = pipeline.two_view_dataset(source, views, batch_size=batch, num_points=config.num_points)
    pairs_per_s = elements_per_second(full, batch, items, 3, repeats)

    decoded = source.stream().prefetch(8)
    decode_per_s = elements_per_second(decoded, 1, items * batch, batch, repeats)

    def augment(element):
        seed = tf.stack([tf.constant(0, tf.int64), element["global_index"]])
        return pipeline.make_view_pair(
            element["image"], seed, views, config.num_points, config.min_overlap,
            correspondence.DEFAULT_NUM_CANDIDATE_PAIRS,
        )

    cached = source.stream(repeat=False).cache().repeat()
    augmented = cached.map(augment, num_parallel_calls=tf.data.AUTOTUNE).batch(batch).prefetch(2)
    augment_per_s = elements_per_second(augmented, batch, items, 3, repeats)

    step = tf.function(model.train_step)
    example = common.pipeline_batch(config)
    times = common.time_interleaved({"step": lambda: step(example)}, warmup=1, repeats=repeats)
    step_pairs_per_s = batch / times["step"]["median_s"]
    results = {
        "pipeline_pairs_per_s": pairs_per_s,
        "train_step_pairs_per_s": step_pairs_per_s,
        "pipeline_over_train_step": pairs_per_s / step_pairs_per_s,
        "decode_only_images_per_s": decode_per_s,
        "augment_only_pairs_per_s_decode_cached": augment_per_s,
        "num_source_images": len(source),
        "step_timing": times["step"],
    }
    settings = {
        **common.config_summary(config, "backbone", "image_size", "batch_size", "num_points"),
        "batches_per_burst": items,
        "repeats": repeats,
        "target_ratio": TARGET_RATIO,
    }
    return settings, results


if __name__ == "__main__":
    common.main(NAME, run, __doc__)
