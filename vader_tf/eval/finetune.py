"""Fine-tuning a pretrained dense encoder for semantic segmentation: a worked example.

The segmentation model reuses the encoder's FPN decoder output (stride 4,
`encoder.pyramid_outputs["decoder"]`) and adds a small head: a 3x3 convolution (ReLU)
and a 1x1 classifier, whose stride-4 logits are upsampled bilinearly to the input
resolution (`ResizeToReference`, which keeps the grid convention of `vader_tf.ops.grid`
and works with dynamic shapes). The whole network is trained
with `model.fit` on softmax cross-entropy, ignoring the void label. The encoder's
projection head is not used. Settings: `vader_tf.eval.protocols.FinetuneProtocol`.
"""

import keras
import tensorflow as tf

from vader_tf.eval.protocols import FinetuneProtocol
from vader_tf.models.layers import ResizeToReference


def build_segmentation_model(encoder, protocol=FinetuneProtocol()):
    """`DenseEncoder` -> model mapping images in [0, 255] to full-resolution logits of
    `protocol.num_classes` classes, with a head of `protocol.head_channels` channels."""
    decoder_output = encoder.pyramid_outputs["decoder"]
    x = keras.layers.Conv2D(
        protocol.head_channels, 3, padding="same", activation="relu",
        name="segmentation_head_conv",
    )(decoder_output)
    x = keras.layers.Conv2D(protocol.num_classes, 1, name="segmentation_logits")(x)
    logits = ResizeToReference(name="segmentation_upsample")(x, encoder.input)
    return keras.Model(encoder.input, logits, name="segmentation_model")


def _random_flip(image, label):
    flip = tf.random.uniform([]) < 0.5
    image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
    label = tf.cond(flip, lambda: tf.reverse(label, [1]), lambda: label)
    return image, label


def finetune_segmentation(model, dataset, protocol=FinetuneProtocol(), seed=0):
    """Trains `model` (from `build_segmentation_model`) with `model.fit`.

    Args:
        model: the segmentation model.
        dataset: `tf.data.Dataset` of (float32 `[H, W, 3]` image, int32 `[H, W]` label)
            examples of one size (e.g. `vader_tf.data.segmentation.segmentation_dataset`).
        protocol: a `FinetuneProtocol`: the label excluded from the loss
            (`ignore_label`), optimisation `steps`, images per step (`batch_size`) and
            Adam `learning_rate`.
        seed: seed of the shuffling.

    Returns:
        The Keras `History`.
    """
    model.compile(
        optimizer=keras.optimizers.Adam(protocol.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=protocol.ignore_label
        ),
    )
    training_data = (
        dataset.shuffle(1000, seed=seed)
        .repeat()
        .map(_random_flip, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(protocol.batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    return model.fit(
        training_data, steps_per_epoch=protocol.steps, epochs=1, shuffle=False, verbose=0
    )
