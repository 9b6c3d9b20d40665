"""A fixed-size FIFO queue of key embeddings held in variables (MoCo's dictionary)."""

import tensorflow as tf


def random_unit_rows(shape, dtype="float32", seed=None):
    """Initial queue content: rows drawn uniformly on the unit sphere."""
    rows = tf.random.stateless_normal(shape, seed=[seed or 0, 0])
    return tf.cast(tf.math.l2_normalize(rows, axis=-1), dtype)


def enqueue(queue, pointer, keys, mask=None):
    """Writes `keys` into `queue` at `pointer`, wrapping around, and advances `pointer`.

    After the call the queue holds the newest `min(M, K)` of the enqueued keys, where `M`
    is the number of keys and `K` the queue length; older entries are overwritten in
    first-in, first-out order. `M` need not divide `K`.

    Args:
        queue: `[K, D]` variable.
        pointer: scalar int64 variable: the slot the next key goes to.
        keys: `[M, D]` tensor.
        mask: optional `[M]` bool; only the keys where it is True are written (and count
            in `M`).
    """
    if mask is not None:
        keys = tf.boolean_mask(keys, mask)
    queue_size = tf.shape(queue, out_type=tf.int64)[0]
    num_keys = tf.shape(keys, out_type=tf.int64)[0]
    # With more keys than slots only the newest K survive; writing all of them would
    # scatter duplicate indices, whose order TensorFlow leaves undefined.
    kept = tf.minimum(num_keys, queue_size)
    # int32: XLA (`--jit_compile`) slices at a dynamic start only with an int32 index.
    newest = keys[tf.cast(num_keys - kept, tf.int32) :]
    start = pointer + (num_keys - kept)
    slots = (start + tf.range(kept, dtype=tf.int64)) % queue_size
    queue.assign(tf.tensor_scatter_nd_update(queue, slots[:, None], tf.cast(newest, queue.dtype)))
    pointer.assign((pointer + num_keys) % queue_size)
