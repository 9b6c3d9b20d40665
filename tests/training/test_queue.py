import numpy as np
import pytest
import tensorflow as tf

from vader_tf.training.queue import enqueue, random_unit_rows


class NumpyQueue:
    """Reference FIFO: a list of the newest K keys, laid out at pointer positions."""

    def __init__(self, initial):
        self.slots = initial.copy()
        self.pointer = 0

    def push(self, keys):
        for key in keys:
            self.slots[self.pointer] = key
            self.pointer = (self.pointer + 1) % len(self.slots)


@pytest.mark.parametrize("queue_size,batches", [(10, [3, 3, 3, 3, 3]), (7, [4, 4, 4]), (5, [12, 2]), (6, [6, 6])])
def test_enqueue_matches_fifo_reference(queue_size, batches):
    rng = np.random.default_rng(queue_size)
    initial = rng.normal(size=(queue_size, 4)).astype("float32")
    queue = tf.Variable(initial)
    pointer = tf.Variable(0, dtype=tf.int64)
    expected = NumpyQueue(initial)
    for size in batches:
        keys = rng.normal(size=(size, 4)).astype("float32")
        enqueue(queue, pointer, tf.constant(keys))
        expected.push(keys)
        np.testing.assert_array_equal(queue.numpy(), expected.slots)
        assert int(pointer.numpy()) == expected.pointer


def test_random_unit_rows_are_unit_and_seeded():
    a = random_unit_rows((50, 8), seed=3).numpy()
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(a, random_unit_rows((50, 8), seed=3).numpy())
    assert not np.allclose(a, random_unit_rows((50, 8), seed=4).numpy())


def test_enqueue_with_mask_writes_only_the_kept_keys():
    rng = np.random.default_rng(1)
    initial = rng.normal(size=(6, 3)).astype("float32")
    queue, pointer = tf.Variable(initial), tf.Variable(4, dtype=tf.int64)
    keys = rng.normal(size=(5, 3)).astype("float32")
    mask = np.array([True, False, True, False, True])
    enqueue(queue, pointer, tf.constant(keys), tf.constant(mask))
    expected = NumpyQueue(initial)
    expected.pointer = 4
    expected.push(keys[mask])
    np.testing.assert_array_equal(queue.numpy(), expected.slots)
    assert int(pointer.numpy()) == expected.pointer == 1
