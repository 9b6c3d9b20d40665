"""Layout of a pretraining run directory, and loading the trained encoder from it.

`RunDir` is the one home of this layout; nothing else spells a file name of a run. A run
directory (`--model_dir` of `experiments/pretrain.py`, local or on any filesystem
`tf.io.gfile` knows, e.g. `gs://`) holds:

- `encoder_config.json`: the serialized `DenseEncoder` config (architecture only);
- `run_config.json`: the flags and method settings of the run;
- `checkpoints/ckpt-<step>.*`: `tf.train.Checkpoint`s whose root has, among others,
  the child `encoder` (the query encoder, the network users want) and `step`;
- `tensorboard/events.out.tfevents.*`: TensorBoard event files;
- `encoder.keras`: the final query encoder as a Keras file, written at the end of a run.

A run killed while writing may leave `checkpoints/ckpt-<step>_temp/` (TensorFlow's
staging folder of a checkpoint being written), `checkpoints/checkpoint.tmp<hex>` (its
temporary copy of the checkpoint state file, left where a rename is a copy and a delete
that TensorFlow believes atomic, as with filesystem plugins such as tensorflow-io's; gs://
has TensorFlow write the state file in place) or `*.tmp-<pid>*` files of an atomic write; `RunDir.remove_stale_leftovers`
deletes them when the run is restarted.

`load_encoder` rebuilds the encoder from `encoder_config.json` and restores only its
weights from a checkpoint, so it needs neither the optimizer nor the queue.
"""

import os
import re

import keras
import tensorflow as tf
from absl import logging

from vader_tf import storage

# `*.tmp-<pid>` (JSON files) and `*.tmp-<pid>.keras` (the encoder's atomic save).
_ATOMIC_WRITE_TMP = re.compile(r"\.tmp-(\d+)(\.keras)?$")
_CHECKPOINT_STEP = re.compile(r"-(\d+)$")
# TensorFlow writes `checkpoints/checkpoint` through `checkpoint.tmp<uuid hex>` and a rename.
_STATE_FILE_TMP = "checkpoint.tmp" + "[0-9a-f]" * 32


class RunDir:
    """The paths and file formats of one pretraining run directory.

    Args:
        path: the run directory (it need not exist yet).
    """

    ENCODER_CONFIG = "encoder_config.json"
    RUN_CONFIG = "run_config.json"
    CHECKPOINT_DIR = "checkpoints"
    CHECKPOINT_PREFIX = "ckpt"
    TENSORBOARD_DIR = "tensorboard"
    ENCODER_FILE = "encoder.keras"
    EVENT_FILE_PATTERN = "events.out.tfevents.*"

    def __init__(self, path):
        self.path = os.fspath(path)

    def __repr__(self):
        return f"RunDir({self.path!r})"

    def _join(self, *names):
        return os.path.join(self.path, *names)

    @property
    def encoder_config_path(self):
        return self._join(self.ENCODER_CONFIG)

    @property
    def run_config_path(self):
        return self._join(self.RUN_CONFIG)

    @property
    def checkpoint_dir(self):
        return self._join(self.CHECKPOINT_DIR)

    @property
    def tensorboard_dir(self):
        return self._join(self.TENSORBOARD_DIR)

    @property
    def encoder_path(self):
        return self._join(self.ENCODER_FILE)

    def worker_scratch(self, task_id):
        """Where a non-chief worker of a multi-worker run writes (deleted at its end)."""
        return RunDir(self._join(f"worker{task_id}_scratch"))

    def looks_like_run(self):
        """Whether the directory holds a checkpoint or an encoder config."""
        return bool(self.latest_checkpoint()) or tf.io.gfile.exists(self.encoder_config_path)

    # Checkpoints.

    def checkpoint_manager(self, checkpoint, max_to_keep):
        """A `tf.train.CheckpointManager` writing `checkpoints/ckpt-<step>`."""
        return tf.train.CheckpointManager(
            checkpoint,
            self.checkpoint_dir,
            max_to_keep=max_to_keep,
            checkpoint_name=self.CHECKPOINT_PREFIX,
        )

    def latest_checkpoint(self):
        """Path prefix of the newest checkpoint, or None."""
        return tf.train.latest_checkpoint(self.checkpoint_dir)

    def latest_step(self):
        """The step of the newest checkpoint (0 if there is none)."""
        latest = self.latest_checkpoint()
        return int(_CHECKPOINT_STEP.search(latest).group(1)) if latest else 0

    # TensorBoard.

    def event_files(self):
        """The TensorBoard event files, oldest first.

        Sorted by name, which starts with the writer's creation time in seconds (file
        modification times are not available on every filesystem, e.g. `ram://`).
        """
        pattern = os.path.join(self.tensorboard_dir, self.EVENT_FILE_PATTERN)
        return sorted(
            tf.io.gfile.glob(pattern),
            key=lambda path: (_event_file_time(path), os.path.basename(path)),
        )

    # Configs.

    def read_run_config(self):
        """The stored `run_config.json` as a dict, or None if there is none."""
        return storage.read_json_if_exists(self.run_config_path)

    def write_run_config(self, run_config):
        storage.makedirs(self.path)
        storage.write_json_atomic(self.run_config_path, run_config)

    def save_encoder_config(self, encoder):
        """Writes the encoder's architecture to `encoder_config.json`."""
        storage.makedirs(self.path)
        storage.write_json_atomic(
            self.encoder_config_path, keras.saving.serialize_keras_object(encoder)
        )

    def encoder_from_config(self, output=None):
        """A freshly initialised encoder with the architecture recorded in the run,
        returning the representation `output` if given (see `DenseEncoder`), else the one
        recorded (the training embedding; runs recorded before `output` existed have none
        and get `DenseEncoder`'s default)."""
        if not tf.io.gfile.exists(self.encoder_config_path):
            raise FileNotFoundError(
                f"{self.encoder_config_path} not found: {self.path!r} is not a vader-tf "
                "pretraining run directory."
            )
        serialized = storage.read_json(self.encoder_config_path)
        if "grid" not in serialized.get("config", {}):
            # The grid declaration came with serving contract 2. Runs made before the grid
            # fix (e88a202, i.e. v0.1) had a decoder that upsampled with half-pixel
            # centres: their weights load into this code's decoder without error, but it
            # computes another function (same backbone levels, different decoder output).
            logging.warning(
                "%s declares no grid (written before vader-tf 0.2): if the run predates "
                "the grid fix (v0.1), this code rebuilds a different decoder from its "
                "weights; evaluate such a run through the SavedModel its own version "
                "exported.",
                self.encoder_config_path,
            )
        if output is not None:
            serialized = {**serialized, "config": {**serialized["config"], "output": output}}
        return keras.saving.deserialize_keras_object(serialized)

    def save_encoder(self, encoder):
        """Writes `encoder.keras` through a temporary `.tmp-<pid>.keras` and a rename."""
        tmp = storage.temporary_name(self.encoder_path[: -len(".keras")], ".keras")
        encoder.save(tmp)
        tf.io.gfile.rename(tmp, self.encoder_path, overwrite=True)

    # Cleanup.

    def remove_stale_leftovers(self):
        """Deletes what a killed run left half-written, with a log line each.

        That is every `checkpoints/*_temp/` staging folder, every temporary copy of
        TensorFlow's checkpoint state file (`checkpoints/checkpoint.tmp<hex>`) (only the
        chief writes checkpoints into the run directory, and it calls this before its
        first save), and every temporary file of an atomic write whose process is no
        longer running.
        """
        leftovers = tf.io.gfile.glob(os.path.join(self.checkpoint_dir, "*_temp"))
        leftovers += tf.io.gfile.glob(os.path.join(self.checkpoint_dir, _STATE_FILE_TMP))
        if tf.io.gfile.isdir(self.path):
            for name in tf.io.gfile.listdir(self.path):
                match = _ATOMIC_WRITE_TMP.search(name.rstrip("/"))
                if match and not storage.process_is_running(int(match.group(1))):
                    leftovers.append(self._join(name.rstrip("/")))
        for path in leftovers:
            logging.warning("Removing %s, left half-written by a killed run.", path)
            storage.remove(path)


def _event_file_time(path):
    """The creation time in an event file name `events.out.tfevents.<time>.<host>...`."""
    parts = os.path.basename(path).split(".")
    return int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0


def restore_encoder_weights(encoder, checkpoint_path):
    """Restores only the query encoder's weights from a pretraining checkpoint."""
    status = tf.train.Checkpoint(encoder=encoder).restore(checkpoint_path)
    status.expect_partial()
    status.assert_existing_objects_matched()
    return encoder


def load_encoder(path, checkpoint=None, output=None):
    """Loads a trained dense encoder as a trainable `keras.Model`.

    Args:
        path: a pretraining run directory (its latest checkpoint is used unless
            `checkpoint` is given) or a `.keras` file holding a `DenseEncoder`.
        checkpoint: optional checkpoint path prefix inside a run directory
            (e.g. `RUN/checkpoints/ckpt-1000`).
        output: the representation the encoder returns (`DenseEncoder`'s `output`):
            by default the served one, "fused" (the L2-normalised FPN output joined with
            the backbone's P4, as the SavedModel's `features`); "decoder" gives the
            L2-normalised FPN output alone, "embedding" the projection head's output, the
            embedding it was trained on. Runs of any version load either way (the
            weights do not depend on it).

    Returns:
        The `DenseEncoder`: images in [0, 255] -> L2-normalised `[B, H/4, W/4, C]` features,
        with `encoder.pyramid_outputs` giving the backbone levels and decoder output and
        `encoder.representations` the three unit-norm stride-4 outputs.
    """
    # Imported here: the encoder module imports keras-hub, which this module does not need.
    from vader_tf.models.encoder import DenseEncoder
    from vader_tf.serving_contract import SERVED_REPRESENTATION

    output = output or SERVED_REPRESENTATION
    path = os.fspath(path)
    if path.endswith(".keras") and not tf.io.gfile.isdir(path) and tf.io.gfile.exists(path):
        encoder = keras.saving.load_model(path)
        if not isinstance(encoder, DenseEncoder):
            raise ValueError(
                f"{path!r} holds a {type(encoder).__name__}, not a vader_tf DenseEncoder."
            )
        return encoder.with_output(output)
    if not tf.io.gfile.isdir(path):
        raise FileNotFoundError(f"No run directory or .keras file at {path!r}.")
    run = RunDir(path)
    encoder = run.encoder_from_config(output=output)
    newest = run.latest_checkpoint()
    if checkpoint is None and newest is None:
        raise FileNotFoundError(f"No checkpoint found in {run.checkpoint_dir!r}.")
    if checkpoint is not None and not tf.io.gfile.exists(f"{checkpoint}.index"):
        raise FileNotFoundError(
            f"No checkpoint {checkpoint!r} (a path prefix such as {newest or 'RUN/checkpoints/ckpt-N'!r})."
        )
    return restore_encoder_weights(encoder, checkpoint or newest)
