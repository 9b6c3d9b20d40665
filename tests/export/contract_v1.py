"""Writes a SavedModel in the serving contract of version 1 (before `contract_version`).

Frozen on purpose: it reproduces what `vader_tf.export.saved_model` wrote up to commit
d865c75, so that the readers of today are tested on a real old-format export. Version 1
served the projection head's embedding as `features` (also in `pyramid`, which had no
`embedding` output), and its `vader_export.json` declared neither a contract version nor
which representation `features` is.
"""

import json
import os

import keras
import tensorflow as tf


class _Version1Module(tf.Module):
    def __init__(self, encoder):
        super().__init__(name="vader_encoder")
        head = encoder.representations["embedding"]
        self._features = keras.Model(encoder.input, head)
        self._pyramid = keras.Model(encoder.input, {**encoder.pyramid_outputs, "features": head})
        self.encoder_variables = list(encoder.variables)
        spec = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
        self.serve = tf.function(
            lambda images: {"features": self._features(tf.cast(images, tf.float32))},
            input_signature=[spec],
        )
        self.serve_pyramid = tf.function(
            lambda images: self._pyramid(tf.cast(images, tf.float32)), input_signature=[spec]
        )
        self.serve_encoded_images = encoded_images_function(self.serve)


def encoded_images_function(serve):
    """The `encoded_images` signature's function of versions 1 and 2: decodes same-size
    image files and calls `serve` on them."""
    return tf.function(
        lambda image_bytes: serve(
            tf.map_fn(
                lambda data: tf.io.decode_image(data, channels=3, expand_animations=False),
                image_bytes,
                fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
            )
        ),
        input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
    )


def save_export(module, path, metadata):
    """Saves `module`'s three signatures to `path` with `metadata` (plus their names) as
    `assets.extra/vader_export.json`, as versions 1 and 2 did."""
    signatures = {
        "serving_default": module.serve.get_concrete_function(),
        "pyramid": module.serve_pyramid.get_concrete_function(),
        "encoded_images": module.serve_encoded_images.get_concrete_function(),
    }
    tf.saved_model.save(module, path, signatures=signatures)
    os.makedirs(os.path.join(path, "assets.extra"))
    with open(os.path.join(path, "assets.extra", "vader_export.json"), "w") as f:
        json.dump({**metadata, "signatures": sorted(signatures)}, f)
    return path


def write_version1_export(encoder, path):
    """Exports `encoder` (a `DenseEncoder`) to the SavedModel directory `path`, version 1."""
    metadata = {
        "embedding_dim": int(encoder.representations["embedding"].shape[-1]),
        "input_multiple": 32,
        "output_stride": 4,
    }
    return save_export(_Version1Module(encoder), path, metadata)
