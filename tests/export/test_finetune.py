"""Loading a trained encoder back into Keras, and fine-tuning it."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import vader_tf
from tests.export.helpers import IMAGE_SIZE


def _assert_same_weights(a, b):
    assert len(a.weights) == len(b.weights)
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(x), keras.ops.convert_to_numpy(y))


def test_load_encoder_from_run_dir(encoder, loaded_encoder):
    assert isinstance(loaded_encoder, vader_tf.DenseEncoder)
    _assert_same_weights(encoder, loaded_encoder)


def test_a_missing_checkpoint_is_a_clear_error(model_dir):
    missing = os.path.join(model_dir, "checkpoints", "ckpt-999")
    with pytest.raises(FileNotFoundError, match=r"No checkpoint .*ckpt-999.*such as .*ckpt-7"):
        vader_tf.load_encoder(model_dir, checkpoint=missing)


def test_load_encoder_from_keras_file(encoder, tmp_path):
    path = str(tmp_path / "encoder.keras")
    encoder.save(path)
    restored = vader_tf.load_encoder(path)
    _assert_same_weights(encoder, restored)
    images = np.random.default_rng(0).uniform(0, 255, (1, IMAGE_SIZE, IMAGE_SIZE, 3))
    served = encoder.with_output("fused")  # `load_encoder` serves the fused map.
    np.testing.assert_allclose(
        restored.predict(images, verbose=0), served.predict(images, verbose=0), atol=1e-5
    )


def test_one_fine_tuning_step_updates_the_encoder(model_dir):
    encoder = vader_tf.load_encoder(model_dir)
    num_classes = 3
    logits = keras.layers.Conv2D(num_classes, 1, name="segmentation_head")(
        encoder.pyramid_outputs["decoder"]
    )
    model = keras.Model(encoder.input, logits)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    labels = rng.integers(0, num_classes, (2, IMAGE_SIZE // 4, IMAGE_SIZE // 4))
    kernel = encoder.backbone.get_layer("conv1_conv").kernel
    before = keras.ops.convert_to_numpy(kernel).copy()
    model.fit(images, labels, batch_size=2, epochs=1, verbose=0)
    assert not np.allclose(keras.ops.convert_to_numpy(kernel), before)


# A fresh process: without `import vader_tf` the load must fail naming the missing class;
# after it, plain `keras.saving.load_model` must give back the fine-tuned model.
_LOAD_IN_FRESH_PROCESS = """
import sys
import keras
import numpy as np
path, images_path = sys.argv[1:]
try:
    keras.saving.load_model(path)
except Exception as error:
    print("WITHOUT IMPORT:", str(error).split("Full object config")[0].replace("\\n", " "))
import vader_tf
model = keras.saving.load_model(path)
np.save(images_path + ".out.npy", model.predict(np.load(images_path), verbose=0))
print("LOSS:", model.loss.get_config())
"""


def test_fine_tuned_model_with_void_label_saves_and_loads_in_a_fresh_process(
    model_dir, tmp_path
):
    # The docs' example: a head on the decoder, a loss that ignores the void label.
    encoder = vader_tf.load_encoder(model_dir)
    num_classes, void = 3, 3
    logits = keras.layers.Conv2D(num_classes, 1)(encoder.pyramid_outputs["decoder"])
    model = keras.Model(encoder.input, logits)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=void),
    )
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    labels = rng.integers(0, num_classes + 1, (2, IMAGE_SIZE // 4, IMAGE_SIZE // 4))
    history = model.fit(images, labels, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    path, images_path = str(tmp_path / "segmenter.keras"), str(tmp_path / "images.npy")
    model.save(path)
    np.save(images_path, images)

    result = subprocess.run(
        [sys.executable, "-c", _LOAD_IN_FRESH_PROCESS, path, images_path],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Could not locate class 'ImageNormalization'" in result.stdout
    assert f"'ignore_class': {void}" in result.stdout
    np.testing.assert_allclose(
        np.load(images_path + ".out.npy"), model.predict(images, verbose=0), atol=1e-4
    )
