"""Layout of a pretraining run directory, and loading the trained encoder from it.

A run directory (`--model_dir` of `experiments/pretrain.py`) holds:

- `encoder_config.json`: the serialized `DenseEncoder` config (architecture only);
- `run_config.json`: the flags and method settings of the run;
- `checkpoints/ckpt-<step>.*`: `tf.train.Checkpoint`s whose root has, among others,
  the child `encoder` (the query encoder, the network users want) and `step`;
- `tensorboard/`: TensorBoard event files.

`load_encoder` rebuilds the encoder from `encoder_config.json` and restores only its
weights from a checkpoint, so it needs neither the optimizer nor the queue.
"""

import json
import os

import keras
import tensorflow as tf

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
