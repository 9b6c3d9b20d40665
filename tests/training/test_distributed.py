"""One step on 2 logical CPU replicas equals the same global batch on 1 replica."""

import numpy as np
import pytest
import tensorflow as tf

from tests.training import reference
from tests.training.helpers import build_small_model, run_steps, synthetic_batch, two_replicas


def _train(strategy, method, bn_groups, batches, shuffle_bn=False, symmetric_loss=True):
    with strategy.scope():
        model = build_small_model(
            method,
            queue_size=48,
            bn_groups=bn_groups,
            shuffle_bn=shuffle_bn,
            symmetric_loss=symmetric_loss,
            # The tiny ResNet: with ResNet-18's 2-image BN groups at 64 px, the float32
            # rounding of a convolution on 4 images instead of 2 (1 vs 2 replicas) grows
            # to ~1e-3 through the ill-conditioned group statistics in two SGD steps.
            tiny=True,
        )
    metrics = run_steps(model, strategy, batches)
    return model, metrics


# Two replicas sum gradients in another order than one, and run each network on half as
# many images per call (one call per network and step: the convolutions' float32 rounding
# differs with the batch size, and BN groups of 2 images amplify it): allow rounding drift
# after two SGD steps (updates are ~1e-2; a wrong replica scaling would be off by that
# much; measured drift up to 4.4e-4 on one stem channel).
RTOL, ATOL = 1e-3, 1e-3


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


def _assert_same_metrics(one_metrics, two_metrics):
    for one_step, two_step in zip(one_metrics, two_metrics):
        for name in ("loss", "positive_similarity", "negative_similarity", "accuracy"):
            assert two_step[name] == pytest.approx(one_step[name], rel=1e-4, abs=1e-6), name


@pytest.mark.parametrize("symmetric_loss", [True, False], ids=["symmetric", "one_direction"])
@pytest.mark.parametrize("shuffle_bn", [False, True], ids=["guard_off", "shuffle_bn"])
def test_vader_two_replicas_equal_one_replica(shuffle_bn, symmetric_loss):
    # BN groups match: one replica with 2 groups of 2 images == 2 replicas with 1 group
    # of 2 images each; with shuffle BN both draw the same permutation of the global
    # batch, so the key groups match too. Pair 1 is invalid so the global-count scaling
    # and the count-weighted metrics are exercised (replicas hold 1 and 2 valid pairs).
    batches = [synthetic_batch(4, seed=s, invalid=(1,)) for s in range(2)]
    one, one_metrics = _train(
        tf.distribute.get_strategy(), "vader", 2, batches, shuffle_bn, symmetric_loss
    )
    two_strategy = two_replicas()
    two, two_metrics = _train(two_strategy, "vader", 1, batches, shuffle_bn, symmetric_loss)
    _assert_same_state(one, two)
    _assert_same_metrics(one_metrics, two_metrics)
    # Every replica holds the same queue.
    replicas = two_strategy.experimental_local_results(two.queue.value)
    np.testing.assert_array_equal(replicas[0].numpy(), replicas[1].numpy())
    assert np.isfinite(one_metrics[-1]["loss"])


@pytest.mark.parametrize("symmetric_loss", [True, False], ids=["symmetric", "one_direction"])
def test_moco_two_replicas_equal_one_replica(symmetric_loss):
    batches = [synthetic_batch(4, seed=s) for s in range(2)]
    one, one_metrics = _train(
        tf.distribute.get_strategy(), "moco", 2, batches, symmetric_loss=symmetric_loss
    )
    two, two_metrics = _train(two_replicas(), "moco", 1, batches, symmetric_loss=symmetric_loss)
    _assert_same_state(one, two)
    _assert_same_metrics(one_metrics, two_metrics)


def test_logged_metrics_weight_replicas_by_valid_count():
    # Replica 0 holds pairs 0-1 (pair 0 invalid: 1 valid), replica 1 pairs 2-3 (2 valid).
    # The logged loss and accuracy are the means over all valid rows, from a NumPy
    # re-derivation on the networks' outputs (BN per replica half, as in the step).
    batch = synthetic_batch(4, seed=3, invalid=(0,))
    twin = build_small_model("vader", queue_size=48, tiny=True)
    queue = twin.queue.numpy()
    halves = (slice(0, 2), slice(2, 4))
    maps = {
        (net, view): np.concatenate(
            [getattr(twin, net)(batch[view][h], training=True).numpy() for h in halves]
        )
        for net in ("query_model", "key_model")
        for view in ("view1", "view2")
    }
    losses, correct = [], []
    for image in np.flatnonzero(batch["valid"]):
        for qv, qp, kv, kp in (("view1", "points1", "view2", "points2"), ("view2", "points2", "view1", "points1")):
            q = reference.unit(reference.bilinear(maps["query_model", qv][image], batch[qp][image]))
            k = reference.unit(reference.bilinear(maps["key_model", kv][image], batch[kp][image]))
            loss, _ = reference.info_nce(q, k, queue, 0.2)
            losses.extend(loss)
            correct.extend(np.sum(q * k, 1) > (q @ queue.T).max(1))

    _, metrics = _train(two_replicas(), "vader", 1, [batch])
    assert metrics[0]["loss"] == pytest.approx(np.mean(losses), rel=1e-4)
    assert metrics[0]["accuracy"] == pytest.approx(np.mean(correct), abs=1e-6)
