import math

import numpy as np
import tensorflow as tf

from vader_tf.training.momentum import ema_update, momentum_at


def test_ema_update_formula():
    target = [tf.Variable([1.0, 2.0]), tf.Variable([[3.0]])]
    source = [tf.constant([3.0, 6.0]), tf.constant([[7.0]])]
    ema_update(target, source, 0.75)
    np.testing.assert_allclose(target[0].numpy(), [1.5, 3.0])
    np.testing.assert_allclose(target[1].numpy(), [[4.0]])


def test_momentum_schedules():
    assert math.isclose(float(momentum_at(5, 0.99)), 0.99, rel_tol=1e-6)
    assert math.isclose(float(momentum_at(0, 0.99, 100, "cosine")), 0.99, rel_tol=1e-6)
    assert math.isclose(float(momentum_at(50, 0.99, 100, "cosine")), 0.995, rel_tol=1e-6)
    assert math.isclose(float(momentum_at(100, 0.99, 100, "cosine")), 1.0, rel_tol=1e-6)
