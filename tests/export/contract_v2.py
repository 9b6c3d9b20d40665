"""Writes a SavedModel in the serving contract of version 2.

Frozen on purpose: it reproduces what `vader_tf.export.saved_model` wrote from the
versioned contract up to the switch to contract 3 (commit 150f9bc), so that the readers of
today are tested on a real old-format export. Version 2 served the L2-normalised decoder
output as `features` (in `serving_default`, `encoded_images` and `pyramid`, beside
`embedding`, the raw `decoder` and `P2`..`P5`), and its `vader_export.json` declared
`contract_version: 2` and `features: "decoder"`.
"""

import keras
import tensorflow as tf

from tests.export.contract_v1 import encoded_images_function, save_export


def _unit(x):
    return tf.math.l2_normalize(x, axis=-1)


class _Version2Module(tf.Module):
    def __init__(self, encoder):
        super().__init__(name="vader_encoder")
        outputs = {
            **encoder.pyramid_outputs,
            "embedding": encoder.representations["embedding"],
        }
        self._pyramid = keras.Model(encoder.input, outputs)
        self.encoder_variables = list(encoder.variables)
        spec = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")

        def pyramid(images):
            out = self._pyramid(tf.cast(images, tf.float32), training=False)
            return {**out, "features": _unit(out["decoder"])}

        self.serve_pyramid = tf.function(pyramid, input_signature=[spec])
        self.serve = tf.function(
            lambda images: {"features": pyramid(images)["features"]}, input_signature=[spec]
        )
        self.serve_encoded_images = encoded_images_function(self.serve)


def write_version2_export(encoder, path):
    """Exports `encoder` (a `DenseEncoder`) to the SavedModel directory `path`, version 2."""
    metadata = {
        "contract_version": 2,
        "features": "decoder",
        "feature_dim": int(encoder.pyramid_outputs["decoder"].shape[-1]),
        "embedding_dim": int(encoder.representations["embedding"].shape[-1]),
        "input_multiple": 32,
        "output_stride": 4,
    }
    return save_export(_Version2Module(encoder), path, metadata)
