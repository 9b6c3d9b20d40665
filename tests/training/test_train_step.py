"""The VADeR and MoCo train steps against NumPy re-derivations from the networks' outputs."""

import numpy as np
import pytest
import tensorflow as tf

from tests.training import reference
from tests.training.helpers import build_small_model, run_steps, synthetic_batch


def _snapshot(variables):
    return [v.numpy().copy() for v in variables]


def test_vader_step_loss_gradient_free_keys_ema_and_queue():
    model = build_small_model("vader", queue_size=64)
    batch = synthetic_batch(batch_size=4, num_points=8, invalid=(2,))
    queue_before = model.queue.numpy().copy()
    # The networks' outputs before the step (BN in training mode, as in the step).
    query_maps = [model.query_model(batch[v], training=True).numpy() for v in ("view1", "view2")]
    key_maps = [model.key_model(batch[v], training=True).numpy() for v in ("view1", "view2")]
    np.testing.assert_allclose(query_maps[0], key_maps[0], atol=1e-6)  # key starts as a copy
    query_before = _snapshot(model.query_model.trainable_variables)

    metrics = run_steps(model, tf.distribute.get_strategy(), [batch])[0]

    losses, accuracies = [], []
    points = (batch["points1"], batch["points2"])
    for image in np.flatnonzero(batch["valid"]):
        for a, b in ((0, 1), (1, 0)):
            q = reference.unit(reference.bilinear(query_maps[a][image], points[a][image]))
            k = reference.unit(reference.bilinear(key_maps[b][image], points[b][image]))
            loss, _ = reference.info_nce(q, k, queue_before, 0.2)
            losses.extend(loss)
            accuracies.extend(np.sum(q * k, 1) > (q @ queue_before.T).max(1))
    assert metrics["loss"] == pytest.approx(np.mean(losses), rel=1e-4)
    assert metrics["accuracy"] == pytest.approx(np.mean(accuracies), abs=1e-6)

    # The query network moved; the key network is exactly the EMA of the new query.
    query_after = _snapshot(model.query_model.trainable_variables)
    assert any(not np.allclose(a, b) for a, b in zip(query_before, query_after))
    key_trainable = [model.key_model.weights[i].numpy() for i in model._ema_indices]
    for key, old, new in zip(key_trainable, query_before, query_after):
        np.testing.assert_allclose(key, 0.9 * old + 0.1 * new, rtol=1e-5, atol=1e-6)
    assert not model.key_model.trainable_weights

    # The queue received the first 4 key pixels of view2 of every valid image, in order;
    # invalid pair 2 (placeholder points) enqueued nothing.
    expected_keys = np.concatenate(
        [reference.unit(reference.bilinear(key_maps[1][i], batch["points2"][i][:4])) for i in (0, 1, 3)]
    )
    np.testing.assert_allclose(model.queue.numpy()[:12], expected_keys, atol=1e-5)
    np.testing.assert_array_equal(model.queue.numpy()[12:], queue_before[12:])
    assert int(model.queue_pointer.numpy()) == 12


def test_cosine_momentum_of_each_step_is_that_of_its_own_step():
    # Cosine EMA schedule over 2 steps from 0.5: step 0 uses 0.5, step 1 uses
    # 1 - 0.5 * (cos(pi / 2) + 1) / 2 = 0.75 (NumPy formula, not the library's).
    model = build_small_model("vader", momentum=0.5, momentum_schedule="cosine", total_steps=2)
    for step, batch_seed in enumerate((0, 1)):
        expected_momentum = 1 - 0.5 * (np.cos(np.pi * step / 2) + 1) / 2
        key_before = [model.key_model.weights[i].numpy().copy() for i in model._ema_indices]
        run_steps(model, tf.distribute.get_strategy(), [synthetic_batch(4, seed=batch_seed)])
        query_after = _snapshot(model.query_model.trainable_variables)
        key_after = [model.key_model.weights[i].numpy() for i in model._ema_indices]
        for key, old, new in zip(key_after, key_before, query_after):
            np.testing.assert_allclose(
                key, expected_momentum * old + (1 - expected_momentum) * new, rtol=1e-5, atol=1e-6
            )


def test_moco_step_loss_matches_numpy():
    model = build_small_model("moco", queue_size=32)
    batch = synthetic_batch(batch_size=4)
    queue_before = model.queue.numpy().copy()
    q = [model.query_model(batch[v], training=True).numpy() for v in ("view1", "view2")]
    k = [model.key_model(batch[v], training=True).numpy() for v in ("view1", "view2")]
    metrics = run_steps(model, tf.distribute.get_strategy(), [batch])[0]
    loss_a, _ = reference.info_nce(q[0], k[1], queue_before, 0.2)
    loss_b, _ = reference.info_nce(q[1], k[0], queue_before, 0.2)
    assert metrics["loss"] == pytest.approx(np.mean(np.concatenate([loss_a, loss_b])), rel=1e-4)
    np.testing.assert_allclose(model.queue.numpy()[:4], k[1], atol=1e-5)


def test_shuffle_bn_keys_are_computed_per_permuted_group():
    # With 2 BN groups and shuffling, each key equals the key network's output on the
    # BN group (of the permuted batch) that image was in, sampled at its points; never on
    # the whole batch.
    model = build_small_model("vader", bn_groups=2, shuffle_bn=True, symmetric_loss=False)
    batch = synthetic_batch(batch_size=4)
    images, points = batch["view2"], batch["points2"]
    permutation = model._key_permutation(4, 1).numpy()
    keys = model._forward_keys({k: tf.constant(v) for k, v in batch.items()})[1].numpy()

    def sampled(maps, rows):
        return np.stack([reference.unit(reference.bilinear(maps[i], points[r])) for i, r in enumerate(rows)])

    for group in (permutation[:2], permutation[2:]):
        expected = sampled(model.key_model(images[group], training=True).numpy(), group)
        np.testing.assert_allclose(keys[group], expected, atol=1e-5)
    whole_batch = sampled(model.key_model(images, training=True).numpy(), range(4))
    assert not np.allclose(keys, whole_batch, atol=1e-3)


def test_keras_fit_drives_the_same_train_step():
    model = build_small_model("vader", queue_size=32)
    batches = [synthetic_batch(4, seed=s) for s in range(3)]
    dataset = tf.data.Dataset.from_tensor_slices(
        {k: np.stack([b[k] for b in batches]) for k in batches[0]}
    )
    history = model.fit(dataset, epochs=1, verbose=0)
    assert set(history.history) == {"loss", "positive_similarity", "negative_similarity", "accuracy"}
    assert np.isfinite(history.history["loss"][0])
    assert int(model.queue_pointer.numpy()) == (3 * 4 * 4) % 32
