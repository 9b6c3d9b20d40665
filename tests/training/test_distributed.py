"""One step on 2 logical CPU replicas equals the same global batch on 1 replica."""

import functools

import numpy as np
import tensorflow as tf

from tests.training.helpers import build_small_model, run_steps, synthetic_batch


@functools.cache
def _two_replicas():
    # One strategy per process: several MirroredStrategy objects in one process can
    # collide on collective instance keys.
    devices = [d.name for d in tf.config.list_logical_devices("CPU")[:2]]
    assert len(devices) == 2, "tests/conftest.py splits the CPU into two logical devices"
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


def _train(strategy, method, bn_groups, batches):
    with strategy.scope():
        model = build_small_model(method, queue_size=48, bn_groups=bn_groups)
    metrics = run_steps(model, strategy, batches)
    return model, metrics


# Two replicas sum gradients in another order than one: allow float-rounding drift after
# two SGD steps (updates are ~1e-2; a wrong replica scaling would be off by that much).
RTOL, ATOL = 1e-3, 1e-4


def _assert_same_state(one, two):
    # Parameters and the EMA copy must agree. BN moving statistics are not compared:
    # they are replica-local running averages that the training maths never reads.
    for a, b in zip(one.query_model.trainable_weights, two.query_model.trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=RTOL, atol=ATOL, err_msg=a.path)
    for i in one._ema_indices:
        a, b = one.key_model.weights[i], two.key_model.weights[i]
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=RTOL, atol=ATOL, err_msg=a.path)
    np.testing.assert_allclose(one.queue.numpy(), two.queue.numpy(), atol=1e-5)
    assert int(one.queue_pointer.numpy()) == int(two.queue_pointer.numpy())


def test_vader_two_replicas_equal_one_replica():
    # BN groups match: one replica with 2 groups of 2 images == 2 replicas with 1 group
    # of 2 images each. Pair 1 is invalid so the global-count scaling is exercised.
    batches = [synthetic_batch(4, seed=s, invalid=(1,)) for s in range(2)]
    one, one_metrics = _train(tf.distribute.get_strategy(), "vader", 2, batches)
    two_strategy = _two_replicas()
    two, _ = _train(two_strategy, "vader", 1, batches)
    _assert_same_state(one, two)
    # Every replica holds the same queue.
    replicas = two_strategy.experimental_local_results(two.queue.value)
    np.testing.assert_array_equal(replicas[0].numpy(), replicas[1].numpy())
    assert np.isfinite(one_metrics[-1]["loss"])


def test_moco_two_replicas_equal_one_replica():
    batches = [synthetic_batch(4, seed=s) for s in range(2)]
    one, _ = _train(tf.distribute.get_strategy(), "moco", 2, batches)
    two, _ = _train(_two_replicas(), "moco", 1, batches)
    _assert_same_state(one, two)
