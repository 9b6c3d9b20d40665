"""Loading a trained encoder back into Keras, and fine-tuning it."""

import keras
import numpy as np

import vader_tf
from tests.export.helpers import IMAGE_SIZE


def _assert_same_weights(a, b):
    assert len(a.weights) == len(b.weights)
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(x), keras.ops.convert_to_numpy(y))


def test_load_encoder_from_run_dir(encoder, loaded_encoder):
    assert isinstance(loaded_encoder, vader_tf.DenseEncoder)
    _assert_same_weights(encoder, loaded_encoder)


def test_load_encoder_from_keras_file(encoder, tmp_path):
    path = str(tmp_path / "encoder.keras")
    encoder.save(path)
    restored = vader_tf.load_encoder(path)
    _assert_same_weights(encoder, restored)
    images = np.random.default_rng(0).uniform(0, 255, (1, IMAGE_SIZE, IMAGE_SIZE, 3))
    np.testing.assert_allclose(
        restored.predict(images, verbose=0), encoder.predict(images, verbose=0), atol=1e-5
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
