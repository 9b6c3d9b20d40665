"""The training loop: one `strategy.run(model.train_step)` loop for every strategy.

Keras `fit` cannot drive `MultiWorkerMirroredStrategy`, so pretraining always uses this
loop; it calls the model's own `train_step`, the same one `fit` would call. It restores
the newest checkpoint of `model_dir` (model, momentum copy, queue, optimizer, step), resumes
the data stream at the next unseen element, writes TensorBoard scalars, and saves
checkpoints every `checkpoint_every` steps. A non-finite loss stops the run before the
next checkpoint, so the last good checkpoint stays the newest.
"""

import importlib.util
import math
import time

import keras
import tensorflow as tf
from absl import logging

from vader_tf.run_dir import RunDir
from vader_tf.training import summaries
from vader_tf.training.distribution import is_chief


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss becomes NaN or infinite."""


def _worker_run(run, strategy):
    """Where this worker writes: the run directory on the chief, a scratch dir elsewhere."""
    if is_chief(strategy):
        return run
    return run.worker_scratch(strategy.cluster_resolver.task_id)


def _summary_writer(summary_dir, chief):
    """A TensorBoard writer on the chief; None elsewhere or without TensorBoard.

    `tf.summary.scalar` needs the `tensorboard` package (a dependency of vader-tf, but not
    of TensorFlow): without it the run goes on, with one warning and no training curves.
    """
    if not chief:
        return None
    if importlib.util.find_spec("tensorboard") is None:
        logging.warning(
            "TensorBoard is not installed: no training curves are written to %s "
            "(pip install tensorboard to get them).",
            summary_dir,
        )
        return None
    return tf.summary.create_file_writer(summary_dir)


def train(
    build_model,
    make_dataset,
    strategy,
    model_dir,
    train_steps,
    global_batch_size,
    checkpoint_every=500,
    log_every=10,
    keep_checkpoints=3,
    verbose=1,
    run_config=None,
    image_summaries=None,
    jit_compile=False,
):
    """Trains a `MomentumContrast` model, resuming from `model_dir` if it holds a run.

    Args:
        build_model: no-argument callable returning a compiled `MomentumContrast` (called
            under `strategy.scope()`).
        make_dataset: `(input_context, start_index) -> tf.data.Dataset` of per-replica
            batches, starting after `start_index` images of the global stream.
        strategy: the `tf.distribute.Strategy`.
        model_dir: run directory (see `vader_tf.run_dir.RunDir`), local or on any
            filesystem `tf.io.gfile` knows (e.g. `gs://`).
        train_steps: total optimiser steps of the run (a resumed run does the rest).
        global_batch_size: images per step over all replicas.
        checkpoint_every: steps between checkpoints (a final one is always written).
        log_every: steps per compiled loop call, between metric reads and summaries.
        keep_checkpoints: how many checkpoints to keep.
        verbose: 1 shows a progress bar.
        run_config: optional JSON-serialisable dict written to `run_config.json` (by the
            chief) once the model is built and any checkpoint restored, so a run that
            fails before that leaves the directory as it was.
        image_summaries: optional `summaries.ImageSummaries`, written by the chief when
            due (pictures of the features in TensorBoard).
        jit_compile: compile each replica's `train_step` with XLA. The step, not the
            loop: XLA cannot compile the loop's `next(iterator)`.

    Returns:
        `(model, history)` where history is a list of dicts of metrics per logging step.
    """
    with strategy.scope():
        model = build_model()
        model.optimizer.build(model.query_model.trainable_variables)
        checkpoint = tf.train.Checkpoint(
            encoder=model.encoder, model=model, optimizer=model.optimizer
        )
    chief = is_chief(strategy)
    run = RunDir(model_dir)
    worker_run = _worker_run(run, strategy)
    manager = worker_run.checkpoint_manager(checkpoint, max_to_keep=keep_checkpoints)
    latest = run.latest_checkpoint()
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        logging.info("Resumed from %s.", latest)
    if chief:
        run.remove_stale_leftovers()
        run.save_encoder_config(model.encoder)
        if run_config is not None:
            run.write_run_config(run_config)

    step = int(model.optimizer.iterations.numpy())
    if step >= train_steps:
        logging.info("Nothing to do: %s is already at step %d.", model_dir, step)
        return model, []
    start_index = step * global_batch_size
    dataset = strategy.distribute_datasets_from_function(
        lambda context: make_dataset(context, start_index)
    )
    iterator = iter(dataset)

    train_step = model.train_step
    if jit_compile:
        train_step = tf.function(train_step, jit_compile=True)

    @tf.function
    def run_steps(iterator, num_steps):
        for _ in tf.range(num_steps):
            strategy.run(train_step, args=(next(iterator),))

    writer = _summary_writer(worker_run.tensorboard_dir, chief)
    progbar = keras.utils.Progbar(train_steps, verbose=verbose, stateful_metrics=["images/s"])
    progbar.update(step)
    history = []
    while step < train_steps:
        next_checkpoint = (step // checkpoint_every + 1) * checkpoint_every
        num_steps = min(log_every, next_checkpoint - step, train_steps - step)
        started = time.perf_counter()
        run_steps(iterator, tf.constant(num_steps))
        metrics = {m.name: float(m.result()) for m in model.metrics}
        elapsed = time.perf_counter() - started
        for metric in model.metrics:
            metric.reset_state()
        step += num_steps
        if not math.isfinite(metrics["loss"]):
            raise NonFiniteLossError(
                f"Loss became {metrics['loss']} by step {step}; stopped without saving. "
                f"The newest checkpoint, {run.latest_checkpoint()}, is the last good one."
            )
        metrics["images/s"] = num_steps * global_batch_size / elapsed
        history.append({"step": step, **metrics})
        if writer is not None:
            with writer.as_default(step=step):
                for name, value in metrics.items():
                    tf.summary.scalar(name.replace("/", "_per_"), value)
                tf.summary.scalar("learning_rate", float(model.optimizer.learning_rate))
        summaries.maybe_write(image_summaries, model, step, num_steps, step == train_steps, writer)
        progbar.update(step, [(k, v) for k, v in metrics.items()])
        if step % checkpoint_every == 0 or step == train_steps:
            manager.save(checkpoint_number=step)
    if writer is not None:
        writer.flush()
    if chief:
        run.save_encoder(model.encoder)
    elif tf.io.gfile.exists(worker_run.path):
        tf.io.gfile.rmtree(worker_run.path)
    return model, history
