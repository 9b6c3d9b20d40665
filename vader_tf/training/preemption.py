"""Stopping a training run on SIGTERM or SIGINT with a checkpoint at the current step.

A preempted cloud VM or a cluster scheduler sends SIGTERM, a user at a terminal Ctrl-C
(SIGINT). While `loop.train` runs, `watch` replaces both signals' handlers with one that
only notes the signal (and puts back the default action, so a second signal ends the
process at once, whatever it is doing). The loop asks `check` after each compiled chunk of
steps; once a stop is due, the loop saves a checkpoint at that step, `check` logs one line
and raises `TrainingInterrupted`, a `SystemExit` with the signal's conventional status
(128 + its number: 143 for SIGTERM, 130 for SIGINT). Rerunning the same command resumes
from that checkpoint, as from any other.

Where the workers stop:

- One process (the default strategy, `MirroredStrategy`): after the chunk in which the
  signal arrived.
- Several workers (`MultiWorkerMirroredStrategy` with a cluster in `TF_CONFIG`):
  TensorFlow's `tf.distribute.experimental.PreemptionCheckpointHandler` agrees on the
  step. A worker that received the signal announces it through the cluster's coordination
  service; every worker then saves after the same number of chunks and stops (a chunk or
  two after the signal: the handler polls for it once a second and lets the slowest worker
  catch up), each with the loop's own `CheckpointManager` (the chief into the run
  directory, the others into their scratch directories) through the handler's `save_fn`,
  so the run directory keeps its layout and its checkpoints hold only the training state.
  The handler is given a `termination_watcher_fn` that reads the noted signal, so it
  installs no signal handler of its own and SIGINT counts as well as SIGTERM; the handler's
  own (empty) checkpoint and folder are never written. Workers that received no signal
  themselves exit with SIGTERM's status, as preempted ones. On a Google Compute Engine CPU
  VM the handler does nothing (TensorFlow supports it on GPU VMs only there): the signals
  are then left as they are (see below: SIGTERM is logged and training goes on; SIGINT
  raises `KeyboardInterrupt`), with a warning.

A signal that arrives during the last chunk of the run stops nothing: the run ends as
usual, with its final checkpoint and `encoder.keras`.

`MultiWorkerMirroredStrategy`'s coordination service installs a SIGTERM handler in C++
(TensorFlow's preemption notifier) that only logs "SIGTERM caught": without `watch`, a
worker trains on after SIGTERM until it is killed. Python cannot see that handler, so
after the loop SIGTERM gets its default action (the process ends) rather than it.
"""

import contextlib
import os
import signal
import threading

import tensorflow as tf
from absl import logging

# The signals that stop a run with a checkpoint.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_status(signum):
    """The status a shell reports for a process ended by signal `signum`: 128 + its number."""
    return 128 + int(signum)


class TrainingInterrupted(SystemExit):
    """Raised by `loop.train` once it saved a checkpoint on SIGTERM or SIGINT.

    A `SystemExit` whose code is the signal's conventional exit status, so that a script
    exits with it (and without a traceback); a caller may catch it to do something else.

    Attributes:
        signum: the signal received (SIGTERM for a worker stopped by another's signal).
        step: the step of the checkpoint written.
        checkpoint: where it was written.
    """

    def __init__(self, signum, step, checkpoint):
        super().__init__(exit_status(signum))
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint


class _ClusterAgreed(Exception):
    """Raised through `PreemptionCheckpointHandler` once it saved: stop this worker."""


class _Signals:
    """Notes the first of `STOP_SIGNALS`; after it, both signals end the process at once."""

    def __init__(self):
        self.received = None
        self.previous = {}

    def handle(self, signum, frame):
        del frame
        if self.received is None:
            self.received = signum
        # A second signal, e.g. during the checkpoint's save, must not wait for it.
        for other in STOP_SIGNALS:
            signal.signal(other, signal.SIG_DFL)

    def install(self):
        for signum in STOP_SIGNALS:
            self.previous[signum] = signal.signal(signum, self.handle)

    def restore(self):
        for signum, handler in self.previous.items():
            # None: a handler installed outside Python, which cannot be put back. (A C++
            # handler installed after Python started, e.g. TensorFlow's preemption
            # notifier, shows as the default action: it is not put back either.)
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


class _Watch:
    """What `watch` yields: `check(step, save)` after each chunk of steps."""

    def __init__(self, signals):
        self._signals = signals

    def check(self, step, save):
        """Stops the run if a stop is due: `save()` (returning the checkpoint's path) and
        raise `TrainingInterrupted`; otherwise returns."""
        if self._signals is not None and self._signals.received is not None:
            self._stop(self._signals.received, step, save())

    def _stop(self, signum, step, checkpoint, own=True):
        cause = (
            f"Received {signal.Signals(signum).name}"
            if own
            else "Another worker received a termination signal"
        )
        logging.warning(
            "%s at step %d: checkpoint written to %s; rerun the same command to resume.",
            cause, step, checkpoint,
        )
        raise TrainingInterrupted(signum, step, checkpoint)

    def close(self):
        pass


class _ClusterWatch(_Watch):
    """`check` through TensorFlow's `PreemptionCheckpointHandler` (several workers)."""

    def __init__(self, signals, handler_dir, cluster_resolver):
        super().__init__(signals)
        self._pending = None
        self._saved = None
        termination_config = tf.distribute.experimental.TerminationConfig(
            termination_watcher_fn=lambda: signals.received is not None,
            exit_fn=self._exit,
            grace_period=0,
            save_fn=self._save,
        )
        # With a `save_fn` the handler saves nothing itself; it restores its empty
        # checkpoint from `handler_dir`, where nothing is ever written.
        self._handler = tf.distribute.experimental.PreemptionCheckpointHandler(
            cluster_resolver,
            tf.train.Checkpoint(),
            checkpoint_dir=handler_dir,
            termination_config=termination_config,
        )

    @property
    def acts(self):
        """False where TensorFlow's handler does nothing (GCE CPU and TPU VMs)."""
        platform = getattr(self._handler, "_platform_device", None)
        return getattr(platform, "name", "") not in ("GCE_CPU", "GCE_TPU")

    def _save(self):
        step, save = self._pending
        self._saved = (step, save())

    def _exit(self):
        raise _ClusterAgreed()

    def check(self, step, save):
        self._pending = (step, save)
        try:
            # The handler counts its calls and saves when the agreed count is reached.
            with _silenced_deprecation():
                self._handler.save_checkpoint_if_preempted()
        except _ClusterAgreed:
            signals = self._signals
            own = signals.received is not None
            saved_step, checkpoint = self._saved
            self._stop(signals.received if own else signal.SIGTERM, saved_step, checkpoint, own)

    def close(self):
        # What the handler's `__del__` does, which may never run (its threads refer to
        # it): stop watching for this worker's signal and for the cluster's.
        # pylint: disable=protected-access
        self._handler._stop_poll_termination_signal_thread()
        self._handler._stop_cluster_wise_termination_watcher_thread()


@contextlib.contextmanager
def _silenced_deprecation():
    """The handler calls its own deprecated `total_run_calls` when it saves (a warning of
    three lines)."""
    from tensorflow.python.util import deprecation  # pylint: disable=g-import-not-at-top

    with deprecation.silence():
        yield


def _in_cluster(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    return (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and resolver is not None
        and bool(resolver.cluster_spec().as_dict())
    )


@contextlib.contextmanager
def watch(strategy, worker_dir):
    """Stops `loop.train` on SIGTERM or SIGINT with a checkpoint (see the module docstring).

    Installs the signal handlers for the block, in the main thread only (elsewhere the
    signals are left as they are), and puts the previous ones back afterwards, also when
    the block raises.

    Args:
        strategy: the training's strategy.
        worker_dir: this worker's own folder (the run directory on the chief, its
            scratch directory elsewhere); with several workers,
            `PreemptionCheckpointHandler` gets a `checkpoint_dir` inside it, which it
            never writes (a non-chief worker makes an empty `workertemp_<id>` folder in
            `worker_dir`).

    Yields:
        An object whose `check(step, save)` the loop calls after each chunk of steps,
        the same number of times on every worker.
    """
    if threading.current_thread() is not threading.main_thread():
        logging.info(
            "Training outside the main thread: SIGTERM and SIGINT keep their handlers "
            "(a signal saves no checkpoint)."
        )
        yield _Watch(None)
        return
    signals = _Signals()
    if _in_cluster(strategy):
        handler_dir = os.path.join(worker_dir, "preemption_handler")
        watcher = _ClusterWatch(signals, handler_dir, strategy.cluster_resolver)
        if not watcher.acts:
            logging.warning(
                "TensorFlow's PreemptionCheckpointHandler does not act on this platform "
                "(a GCE CPU or TPU VM): SIGTERM and SIGINT do not save a checkpoint here "
                "(the newest one is kept)."
            )
            watcher.close()
            yield _Watch(None)
            return
    else:
        watcher = _Watch(signals)
    signals.install()
    try:
        yield watcher
    finally:
        signals.restore()
        watcher.close()
