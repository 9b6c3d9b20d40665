"""Layout of a pretraining run directory, and loading the trained encoder from it.

A run directory (`--model_dir` of `experiments/pretrain.py`) holds:

- `encoder_config.json`: the serialized `DenseEncoder` config (architecture only);
- `run_config.json`: the flags and method settings of the run;
- `checkpoints/ckpt-<step>.*`: `tf.train.Checkpoint`s whose root has, among others,
  the child `encoder` (the query encoder, the network users want) and `step`;
- `tensorboard/`: TensorBoard event files.

A run killed while writing may leave `checkpoints/ckpt-<step>_temp/` (TensorFlow's
staging folder of a checkpoint being written) or `*.tmp-<pid>*` files of an atomic
write; `remove_stale_leftovers` deletes them when the run is restarted.

`load_encoder` rebuilds the encoder from `encoder_config.json` and restores only its
weights from a checkpoint, so it needs neither the optimizer nor the queue.
"""

import json
import os
import re

import keras
import tensorflow as tf
from absl import logging

ENCODER_CONFIG = "encoder_config.json"
RUN_CONFIG = "run_config.json"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PREFIX = "ckpt"
TENSORBOARD_DIR = "tensorboard"


def write_json_atomic(path, payload):
    """Writes JSON to `path` through a temporary file and a rename."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_run_config(model_dir):
    """The stored `run_config.json` of `model_dir` as a dict, or None if there is none."""
    path = os.path.join(model_dir, RUN_CONFIG)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def process_is_running(pid):
    """Whether a process `pid` runs on this machine (a leftover of a dead one is stale)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # It exists, under another user.
    return True


# `*.tmp-<pid>` (write_json_atomic) and `*.tmp-<pid>.keras` (the encoder's atomic save).
_ATOMIC_WRITE_TMP = re.compile(r"\.tmp-(\d+)(\.keras)?$")


def remove_stale_leftovers(model_dir):
    """Deletes what a killed run left half-written in `model_dir`, with a log line each.

    That is every `checkpoints/*_temp/` staging folder (only the chief writes
    checkpoints into `model_dir`, and it calls this before its first save) and every
    temporary file of an atomic write whose process is no longer running.
    """
    leftovers = tf.io.gfile.glob(os.path.join(checkpoint_dir(model_dir), "*_temp"))
    if tf.io.gfile.isdir(model_dir):
        for name in tf.io.gfile.listdir(model_dir):
            match = _ATOMIC_WRITE_TMP.search(name.rstrip("/"))
            if match and not process_is_running(int(match.group(1))):
                leftovers.append(os.path.join(model_dir, name.rstrip("/")))
    for path in leftovers:
        logging.warning("Removing %s, left half-written by a killed run.", path)
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        else:
            tf.io.gfile.remove(path)


def save_encoder_config(encoder, model_dir):
    """Writes the encoder's architecture to `model_dir/encoder_config.json`."""
    os.makedirs(model_dir, exist_ok=True)
    write_json_atomic(
        os.path.join(model_dir, ENCODER_CONFIG), keras.saving.serialize_keras_object(encoder)
    )


def encoder_from_config(model_dir):
    """A freshly initialised encoder with the architecture recorded in `model_dir`."""
    path = os.path.join(model_dir, ENCODER_CONFIG)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: {model_dir!r} is not a vader-tf pretraining run directory."
        )
    with open(path) as f:
        return keras.saving.deserialize_keras_object(json.load(f))


def checkpoint_dir(model_dir):
    return os.path.join(model_dir, CHECKPOINT_DIR)


def latest_checkpoint(model_dir):
    """Path prefix of the newest checkpoint in `model_dir`, or None."""
    return tf.train.latest_checkpoint(checkpoint_dir(model_dir))


def restore_encoder_weights(encoder, checkpoint_path):
    """Restores only the query encoder's weights from a pretraining checkpoint."""
    status = tf.train.Checkpoint(encoder=encoder).restore(checkpoint_path)
    status.expect_partial()
    status.assert_existing_objects_matched()
    return encoder


def load_encoder(path, checkpoint=None):
    """Loads a trained dense encoder as a trainable `keras.Model`.

    Args:
        path: a pretraining run directory (its latest checkpoint is used unless
            `checkpoint` is given) or a `.keras` file holding a `DenseEncoder`.
        checkpoint: optional checkpoint path prefix inside a run directory
            (e.g. `RUN/checkpoints/ckpt-1000`).

    Returns:
        The `DenseEncoder`: images in [0, 255] -> L2-normalised `[B, H/4, W/4, D]` features,
        with `encoder.pyramid_outputs` giving the backbone levels and decoder output.
    """
    if os.path.isfile(path) and path.endswith(".keras"):
        return keras.saving.load_model(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No run directory or .keras file at {path!r}.")
    encoder = encoder_from_config(path)
    newest = latest_checkpoint(path)
    if checkpoint is None and newest is None:
        raise FileNotFoundError(f"No checkpoint found in {checkpoint_dir(path)!r}.")
    if checkpoint is not None and not tf.io.gfile.exists(f"{checkpoint}.index"):
        raise FileNotFoundError(
            f"No checkpoint {checkpoint!r} (a path prefix such as {newest or 'RUN/checkpoints/ckpt-N'!r})."
        )
    return restore_encoder_weights(encoder, checkpoint or newest)
