"""Epoch order of a training stream: which epochs to visit and each epoch's permutation.

All are pure functions of the seed, the epoch and the stream position, shared by the
sources read by index (`vader_tf.data.sources.IndexedImageSource`, through
`index_stream`) and the TFRecord stream (`vader_tf.data.sources.TfdsRecordSource`), so a
resumed run visits the same order.
"""

import contextlib

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


@contextlib.contextmanager
def without_global_seed():
    """Random dataset ops made in this block (inside a dataset function's graph, as
    `flat_map` traces them) ignore the global seed.

    `Dataset.shuffle(seed=...)` combines its seed with the graph's, which is the global
    seed of `tf.random.set_seed` / `keras.utils.set_random_seed` (pretraining sets it
    when it builds the model): the stream would then depend on a seed set elsewhere,
    and a global seed of 0 made TensorFlow compare the tensor `epoch_seed` in Python,
    which fails while the graph is built. Without it the op seed alone decides.
    """
    graph = tf.compat.v1.get_default_graph()
    previous = graph.seed
    graph.seed = None
    try:
        yield
    finally:
        graph.seed = previous


def epoch_seed(seed, epoch):
    """A stateless int64 seed derived from `(seed, epoch)`, for per-epoch random ops that
    take a seed rather than a permutation (the TFRecord stream's shuffle buffer)."""
    return tf.random.stateless_uniform(
        [], seed=tf.stack([tf.constant(seed, tf.int64), epoch]), minval=None, dtype=tf.int64
    )


def index_stream(num_images, seed=0, start_index=0, shuffle=True, repeat=True):
    """`(global_index, file_index)` int64 pairs, from global index `start_index` on.

    The stream lists file indices epoch after epoch; element `g` (its *global index*) is
    computed without reading anything, so `start_index=k` starts at element `k` at once.

    Args:
        num_images: images per epoch.
        seed: seed of the per-epoch permutations.
        start_index: first global index to produce.
        shuffle: permute each epoch (statelessly, by `(seed, epoch)`); else index order.
        repeat: endless epochs; else only epoch 0.
    """

    def epoch_elements(epoch):
        positions = tf.range(num_images, dtype=tf.int64)
        file_indices = epoch_permutation(num_images, seed, epoch) if shuffle else positions
        begin = tf.maximum(start_index - epoch * num_images, 0)
        global_indices = epoch * num_images + positions
        return tf.data.Dataset.from_tensor_slices((global_indices[begin:], file_indices[begin:]))

    return epoch_range(num_images, start_index, repeat).flat_map(epoch_elements)
