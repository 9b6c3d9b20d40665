"""The one-direction step (`symmetric_loss=False`): queries of view 1 against keys of
view 2 only, each network run on one view, the loss of a NumPy re-derivation."""

import numpy as np
import pytest
import tensorflow as tf

from tests.training import reference
from tests.training.helpers import build_small_model, run_steps, synthetic_batch


def _record_inputs(network):
    """Makes `network` record every batch it is called on (eagerly); returns the list."""
    seen = []
    call = network.call

    def recording_call(inputs, *args, **kwargs):
        seen.append(np.asarray(inputs))
        return call(inputs, *args, **kwargs)

    network.call = recording_call
    return seen


def _rows_of(images, view):
    """For each image of `images`, the index of the identical image of `view`, or None."""
    flat = view.reshape(len(view), -1)
    found = []
    for image in images.reshape(len(images), -1):
        match = np.flatnonzero(np.all(flat == image, axis=1))
        found.append(int(match[0]) if len(match) else None)
    return found


@pytest.mark.parametrize("method", ["vader", "moco"])
@pytest.mark.parametrize("symmetric_loss", [False, True], ids=["one_direction", "symmetric"])
def test_each_network_runs_on_the_views_of_its_direction(method, symmetric_loss):
    # Shuffle BN in 2 groups: the key network sees view 2's images permuted.
    batch = synthetic_batch(4, seed=1)
    model = build_small_model(method, bn_groups=2, shuffle_bn=True, symmetric_loss=symmetric_loss)
    key_inputs = _record_inputs(model.key_model)
    query_inputs = _record_inputs(model.query_model)
    model.train_step({k: tf.constant(v) for k, v in batch.items()})

    def views_seen(inputs):
        images = np.concatenate(inputs)
        seen = {}
        for name in ("view1", "view2"):
            rows = [r for r in _rows_of(images, batch[name]) if r is not None]
            if rows:
                seen[name] = sorted(rows)
        assert sum(len(r) for r in seen.values()) == len(images)
        return seen

    every_image = [0, 1, 2, 3]
    expected_queries = {"view1": every_image}
    expected_keys = {"view2": every_image}
    if symmetric_loss:
        expected_queries["view2"] = expected_keys["view1"] = every_image
    assert views_seen(query_inputs) == expected_queries
    assert views_seen(key_inputs) == expected_keys
    # One call per network and step, on all the images of its views (BN groups of 2
    # images are formed inside the call, by ghost batch norm).
    assert [len(x) for x in key_inputs] == [4 * len(expected_keys)]
    assert [len(x) for x in query_inputs] == [4 * len(expected_queries)]


def test_one_direction_vader_loss_and_queue_match_numpy():
    # BN over the whole batch (one group, no shuffle) so the reference can run each
    # network on one view alone. Pair 2 is invalid: no loss rows, nothing enqueued.
    batch = synthetic_batch(4, seed=5, invalid=(2,))
    model = build_small_model("vader", queue_size=48, symmetric_loss=False)
    queue = model.queue.numpy()
    query_maps = model.query_model(batch["view1"], training=True).numpy()
    key_maps = model.key_model(batch["view2"], training=True).numpy()
    losses, correct, enqueued = [], [], []
    for image in np.flatnonzero(batch["valid"]):
        q = reference.unit(reference.bilinear(query_maps[image], batch["points1"][image]))
        k = reference.unit(reference.bilinear(key_maps[image], batch["points2"][image]))
        loss, _ = reference.info_nce(q, k, queue, 0.2)
        losses.extend(loss)
        correct.extend(np.sum(q * k, 1) > (q @ queue.T).max(1))
        enqueued.append(k[:4])  # queue_points_per_image=4
    enqueued = np.concatenate(enqueued)

    (metrics,) = run_steps(model, tf.distribute.get_strategy(), [batch])
    assert len(losses) == 3 * 8  # 3 valid pairs x 8 points, one direction.
    assert metrics["loss"] == pytest.approx(np.mean(losses), rel=1e-4)
    assert metrics["accuracy"] == pytest.approx(np.mean(correct), abs=1e-6)
    np.testing.assert_allclose(model.queue.numpy()[: len(enqueued)], enqueued, atol=1e-5)
    np.testing.assert_array_equal(model.queue.numpy()[len(enqueued) :], queue[len(enqueued) :])
    assert int(model.queue_pointer.numpy()) == len(enqueued)
