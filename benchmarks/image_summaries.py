"""Cost of the TensorBoard pictures (`vader_tf.training.summaries`) on the main job's
shape (ResNet-18, 96 px, batch 16, float32): one picture write (2 photos: forward pass,
PCA, similarity map, the histograms of the last step's sample, PNG encoding and the event
write) against the compiled train step (which keeps that sample, as in a run with
pictures), timed round by round in one process; and the sample's own cost in the step
(`last_step.LastStepSample.record` on rows and logits of the step's shape, compiled on
its own, since its share is far below the step's timing noise). Reports the pictures'
share of a run's wall time at the default cadence (one write per checkpoint,
`checkpoint_every` steps, and the sample at every step), which must stay under 2%; with
pictures off the loop's hook returns at once (timed too) and the step keeps no sample.
The first write also traces its graph: timed on its own and counted in the main job's
share (150 steps, 3 writes).

    python -m benchmarks.image_summaries [--quick]
"""

import tempfile
import time

import tensorflow as tf

from benchmarks import common

NAME = "image_summaries"
BUDGET = 0.02  # Of the run's wall time at the default cadence.


def run(quick):
    from vader_tf.data import sources  # pylint: disable=import-outside-toplevel
    from vader_tf.training import last_step, summaries  # pylint: disable=import-outside-toplevel

    if quick:
        fields, repeats = dict(image_size=64, batch_size=4), 2
    else:
        fields, repeats = dict(backbone="resnet18", image_size=96, batch_size=16), 9
    config, model = common.training_model(**fields, mixed_precision="none")
    batch = common.pipeline_batch(config)
    pictures = summaries.ImageSummaries.from_source(
        sources.samples_source(), config.image_size, config.checkpoint_every
    )
    pictures.attach(model)  # Before the step is traced, as the loop does.
    train_step = tf.function(model.train_step)
    # The sample kept at each step, on rows and logits of the step's shape: both
    # directions' points of every image against the queue.
    rows = config.batch_size * config.num_points * 2
    sample = last_step.LastStepSample(["contrast"])
    step_rows = {
        "positive_similarity": tf.random.uniform([rows], -1.0, 1.0),
        "negative_similarities": tf.random.uniform([rows, config.queue_size], -1.0, 1.0),
    }
    record = tf.function(lambda: sample.record(0, step_rows, tf.ones([rows]), tf.constant(True)))
    writer = tf.summary.create_file_writer(tempfile.mkdtemp(prefix="vader-image-summaries-"))
    counter = iter(range(10**9))
    started = time.perf_counter()
    pictures.write(model, next(counter), writer)  # The first write traces the graph.
    writer.flush()
    first_write_s = time.perf_counter() - started
    times = common.time_interleaved(
        {
            "train_step": lambda: common.block(train_step(batch)),
            "picture_write": lambda: (pictures.write(model, next(counter), writer), writer.flush()),
            "hook_when_off": lambda: summaries.maybe_write(None, model, 1, 1, False, writer),
            "record_sample": record,
        },
        warmup=1,
        repeats=repeats,
    )
    step_s, write_s = times["train_step"]["median_s"], times["picture_write"]["median_s"]
    record_s = times["record_sample"]["median_s"]
    every = config.checkpoint_every
    share = (write_s + every * record_s) / (every * step_s + write_s)
    # The whole main job: train_steps steps, a write at each checkpoint, the first traced.
    writes = -(-config.train_steps // config.checkpoint_every)
    pictures_s = first_write_s + (writes - 1) * write_s + config.train_steps * record_s
    main_job_share = pictures_s / (config.train_steps * step_s + pictures_s)
    results = {
        "train_step_s": step_s,
        "picture_write_s": write_s,
        "hook_when_off_s": times["hook_when_off"]["median_s"],
        "record_sample_s": record_s,
        "record_sample_share_of_step": record_s / step_s,
        "checkpoint_every": config.checkpoint_every,
        "first_write_s": first_write_s,
        "share_of_wall_time_at_default_cadence": share,
        "train_steps": config.train_steps,
        "main_job_share_with_first_trace": main_job_share,
        "budget": BUDGET,
        "within_budget": max(share, main_job_share) < BUDGET,
        "timing": times,
    }
    return common.config_summary(config), results


if __name__ == "__main__":
    common.main(NAME, run, __doc__)
