"""Shared fixtures: one small resnet18 run directory and one SavedModel export."""

import os

import keras
import pytest
import tensorflow as tf

import vader_tf
from tests.export import helpers
from tests.export.helpers import CHECKPOINT_STEP, IMAGE_SIZE
from vader_tf.run_dir import RunDir
from vader_tf.export import saved_model


@pytest.fixture(scope="session")
def encoder():
    """A small randomly initialised resnet18 encoder (16-dim embeddings)."""
    keras.utils.set_random_seed(0)
    return helpers.small_encoder()


@pytest.fixture(scope="session")
def model_dir(encoder, tmp_path_factory):
    """A pretraining run directory holding `encoder` at step `CHECKPOINT_STEP`."""
    run = RunDir(tmp_path_factory.mktemp("run"))
    run.save_encoder_config(encoder)
    checkpoint = tf.train.Checkpoint(
        encoder=encoder, step=tf.Variable(CHECKPOINT_STEP, dtype=tf.int64)
    )
    run.checkpoint_manager(checkpoint, max_to_keep=3).save(checkpoint_number=CHECKPOINT_STEP)
    return run.path


@pytest.fixture(scope="session")
def loaded_encoder(model_dir):
    return vader_tf.load_encoder(model_dir)


@pytest.fixture(scope="session")
def export_base(loaded_encoder, tmp_path_factory):
    """The model base directory holding the one export made for the tests."""
    base = str(tmp_path_factory.mktemp("serving") / "vader")
    saved_model.export_saved_model(
        loaded_encoder, base, sample_size=IMAGE_SIZE, num_sample_images=2
    )
    return base


@pytest.fixture(scope="session")
def export_dir(export_base):
    return os.path.join(export_base, "1")


@pytest.fixture(scope="session")
def exported(export_dir):
    return tf.saved_model.load(export_dir)
