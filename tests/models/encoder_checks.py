"""Checks shared by the encoder tests of every backbone: random input images, and a
SavedModel with a dynamic-shape serving function that must match the Keras encoder."""

import numpy as np
import tensorflow as tf


def random_images(batch, height, width, seed=0):
    """float32 `[batch, height, width, 3]` images uniform in [0, 255]."""
    return np.random.default_rng(seed).uniform(0, 255, (batch, height, width, 3)).astype("float32")


def check_saved_model_with_dynamic_shapes(encoder, export_dir, sizes):
    """Saves `encoder` with a `serve` function of input `[None, None, None, 3]`, loads it
    back and checks, at each (height, width) in `sizes`, the stride-4 output shape and
    that it matches the encoder run eagerly."""
    module = tf.Module()
    module.encoder = encoder
    module.serve = tf.function(
        lambda images: encoder(images, training=False),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
    )
    tf.saved_model.save(module, str(export_dir))
    loaded = tf.saved_model.load(str(export_dir))
    for height, width in sizes:
        images = random_images(1, height, width)
        served = loaded.serve(images).numpy()
        assert served.shape == (1, height // 4, width // 4, encoder.output.shape[-1])
        np.testing.assert_allclose(served, encoder(images, training=False).numpy(), atol=1e-5)
