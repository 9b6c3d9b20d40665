"""The training loop: one `strategy.run(model.train_step)` loop for every strategy.

Keras `fit` cannot drive `MultiWorkerMirroredStrategy`, so pretraining always uses this
loop; it calls the model's own `train_step`, the same one `fit` would call. It restores
the newest checkpoint of `model_dir` (model, momentum copy, queue, optimizer, step), resumes
the data stream at the next unseen element, writes TensorBoard scalars, and saves
checkpoints every `checkpoint_every` steps. A non-finite loss stops the run before the
next checkpoint, so the last good checkpoint stays the newest. SIGTERM or SIGINT saves a
checkpoint at the current step and stops the run with the signal's exit status, on every
worker at the same step (`vader_tf.training.preemption`).

Steps are applied updates: the loop's step is `optimizer.iterations`, which names the
checkpoints and drives the schedules. A step a loss-scaling optimiser skips (non-finite
float16 gradients) changes nothing but the loss scale and the model's `skipped_steps`
(see `MomentumContrast.train_step`); its batch was read, so the stream resumes after
`iterations + skipped_steps` batches. The progress bar, the history and TensorBoard show
each logging interval's mean.
"""

import importlib.util
import math
import time

import keras
import tensorflow as tf
from absl import logging

from vader_tf.run_dir import RunDir
from vader_tf.training import preemption, summaries
from vader_tf.training.distribution import is_chief


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss becomes NaN or infinite."""


# What the loop's steps count (the dry run prints it).
STEP_COUNTER = (
    "Steps: train_steps, checkpoint_every, ckpt-N and the schedules count applied "
    "optimiser updates (optimizer.iterations); a float16 step skipped for non-finite "
    "gradients reads its batch but is not counted (skipped_steps, logged)."
)

# A loss-scaling optimiser halves its scale on every skipped step. Below 1 the float16
# gradients overflow even unscaled: the run has diverged, not merely overflowed.
MIN_LOSS_SCALE = 1.0


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


def _check_loss_scale(model, step, newly_skipped, run):
    """Logs skipped float16 steps; stops the run once the loss scale falls below
    `MIN_LOSS_SCALE` (the gradients are non-finite even unscaled: the run diverged)."""
    scale = float(model.optimizer.dynamic_scale.numpy())
    logging.warning(
        "Skipped %d step(s) with non-finite float16 gradients at step %d (%d skipped in "
        "all); loss scale now %g.",
        newly_skipped, step, int(model.skipped_steps.numpy()), scale,
    )
    if scale < MIN_LOSS_SCALE:
        raise NonFiniteLossError(
            f"The float16 gradients stayed non-finite at step {step} with the loss scale "
            f"down to {scale:g}; stopped without saving. The newest checkpoint, "
            f"{run.latest_checkpoint()}, is the last good one."
        )


def _restore(checkpoint, path):
    """Restores `path`, every object of the program matched.

    A checkpoint written before skipped steps were counted has no `model/skipped_steps`:
    it restores with the count at 0 (logged) if that is the only object it lacks.
    """
    status = checkpoint.restore(path)
    # The reader itself: `tf.train.list_variables` takes a ram:// prefix for a folder.
    stored = set(tf.compat.v1.train.NewCheckpointReader(path).get_variable_to_shape_map())
    if any(name.startswith("model/skipped_steps/") for name in stored):
        status.assert_existing_objects_matched()
        return
    try:
        status.assert_existing_objects_matched()
    except AssertionError as error:
        # skipped_steps is certainly unmatched: it must be the only one.
        if not str(error).startswith("Found 1 Python objects that were not bound"):
            raise
    logging.warning(
        "%s predates the count of skipped float16 steps: counting from 0 (a float16 run "
        "that skipped steps before resumes its stream that many batches early).",
        path,
    )


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

    Raises:
        preemption.TrainingInterrupted: a `SystemExit` (status 143 or 130) after SIGTERM
            or SIGINT, once a checkpoint at the step reached is written.
        NonFiniteLossError: the loss (or the float16 loss scale) diverged.
    """
    with strategy.scope():
        model = build_model()
        model.optimizer.build(model.query_model.trainable_variables)
        summaries.attach(image_summaries, model)  # Not checkpointed (see last_step).
        checkpoint = tf.train.Checkpoint(
            encoder=model.encoder, model=model, optimizer=model.optimizer
        )
    chief = is_chief(strategy)
    run = RunDir(model_dir)
    worker_run = _worker_run(run, strategy)
    manager = worker_run.checkpoint_manager(checkpoint, max_to_keep=keep_checkpoints)
    latest = run.latest_checkpoint()
    if latest:
        _restore(checkpoint, latest)
        logging.info("Resumed from %s.", latest)
    if chief:
        run.remove_stale_leftovers()
        run.save_encoder_config(model.encoder)
        if run_config is not None:
            run.write_run_config(run_config)

    # One counter: the optimiser's applied updates. The stream has also served the
    # batches of skipped steps (non-finite float16 gradients), so it resumes after both.
    step = int(model.optimizer.iterations.numpy())
    skipped = int(model.skipped_steps.numpy())
    if step >= train_steps:
        logging.info("Nothing to do: %s is already at step %d.", model_dir, step)
        return model, []
    start_index = (step + skipped) * global_batch_size
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
    # Every value shown is the interval's mean, as in the history and TensorBoard.
    progbar = keras.utils.Progbar(
        train_steps,
        verbose=verbose,
        stateful_metrics=[m.name for m in model.metrics] + ["images/s", "skipped_steps"],
    )
    progbar.update(step)
    history = []
    reported_skipped = skipped  # skipped steps up to the last history entry
    saved_step = None

    def save():
        """Saves at the current step (once); returns where the run's checkpoint is."""
        nonlocal saved_step
        if saved_step != step:
            manager.save(checkpoint_number=step)
            saved_step = step
        return manager.latest_checkpoint if chief else run.checkpoint_dir

    try:
        with preemption.watch(strategy, worker_run.path) as stop:
            while step < train_steps:
                next_checkpoint = (step // checkpoint_every + 1) * checkpoint_every
                num_steps = min(log_every, next_checkpoint - step, train_steps - step)
                started = time.perf_counter()
                run_steps(iterator, tf.constant(num_steps))
                metrics = {m.name: float(m.result()) for m in model.metrics}
                elapsed = time.perf_counter() - started
                for metric in model.metrics:
                    metric.reset_state()
                previous_step, previous_skipped = step, skipped
                step = int(model.optimizer.iterations.numpy())
                skipped = int(model.skipped_steps.numpy())
                if skipped > previous_skipped:
                    _check_loss_scale(model, step, skipped - previous_skipped, run)
                if step == previous_step:
                    continue  # every batch of the call was skipped: nothing to report, save
                if not math.isfinite(metrics["loss"]):
                    raise NonFiniteLossError(
                        f"Loss became {metrics['loss']} by step {step}; stopped without "
                        f"saving. The newest checkpoint, {run.latest_checkpoint()}, is the "
                        "last good one."
                    )
                metrics["images/s"] = num_steps * global_batch_size / elapsed
                # Skips of calls that applied nothing are reported with the next entry.
                metrics["skipped_steps"] = skipped - reported_skipped
                reported_skipped = skipped
                history.append({"step": step, **metrics})
                if writer is not None:
                    with writer.as_default(step=step):
                        for name, value in metrics.items():
                            tf.summary.scalar(name.replace("/", "_per_"), value)
                        learning_rate = float(model.optimizer.learning_rate)
                        tf.summary.scalar("learning_rate", learning_rate)
                summaries.maybe_write(
                    image_summaries, model, step, num_steps, step == train_steps, writer
                )
                progbar.update(step, [(k, v) for k, v in metrics.items()])
                if step % checkpoint_every == 0 or step == train_steps:
                    save()
                # SIGTERM or SIGINT: save at this step and stop (every worker alike).
                if step < train_steps:
                    stop.check(step, save)
    finally:
        # Also when stopped by a signal (`preemption.TrainingInterrupted`).
        _clean_up(writer, chief, worker_run)
    if chief:
        run.save_encoder(model.encoder)
    return model, history


def _clean_up(writer, chief, worker_run):
    """Flushes TensorBoard and deletes a non-chief worker's scratch directory."""
    if writer is not None:
        writer.flush()
    if not chief and tf.io.gfile.exists(worker_run.path):
        tf.io.gfile.rmtree(worker_run.path)
