"""Epoch order of a training stream: which epochs to visit and each epoch's permutation.

Both are pure functions of the seed and the epoch, shared by the index stream
(`vader_tf.data.pipeline.index_stream`) and the TFRecord stream
(`vader_tf.data.sources.TfdsRecordSource`), so a resumed run visits the same order.
"""

import tensorflow as tf


def epoch_range(num_images, start_index, repeat):
    """The epochs, as an int64 `tf.data.Dataset`, from the one holding `start_index`."""
    first_epoch = start_index // num_images
    if not repeat and first_epoch > 0:
        raise ValueError(
            f"start_index={start_index} is past the single epoch of {num_images} images."
        )
    return tf.data.Dataset.range(first_epoch, tf.int64.max if repeat else first_epoch + 1)


def epoch_permutation(size, seed, epoch):
    """A stateless permutation of `range(size)` seeded by `(seed, epoch)`, int64."""
    keys = tf.random.stateless_uniform([size], seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
    return tf.cast(tf.argsort(keys, stable=True), tf.int64)
