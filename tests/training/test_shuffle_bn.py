"""Shuffle BN across 2 logical CPU replicas: which images share a key's BN group."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.training import reference
from tests.training.helpers import build_small_model, synthetic_batch, two_replicas
from vader_tf.models.layers import current_batch_norm_groups
from vader_tf.training.momentum_contrast import MomentumContrast
from vader_tf.training.optimizers import TorchSGD

GLOBAL_BATCH = 8


def _group_probe(name):
    """A weightless 'network' whose output tells which images were run together.

    Image `i` is a 1x1 pixel of value `i`; every output row is `sum(2 ** i)` over the
    BN group it was normalised in (the batch of the call, split into the groups
    `batch_norm_groups` sets, as a batch norm splits it), so the group can be read back.
    """
    inputs = keras.Input((1, 1, 1))

    def members(x):
        groups = tf.split(x, current_batch_norm_groups())
        return tf.concat(
            [tf.fill([tf.shape(g)[0], 1], tf.reduce_sum(tf.pow(2.0, g[:, 0, 0, 0]))) for g in groups],
            axis=0,
        )

    return keras.Model(inputs, keras.layers.Lambda(members, output_shape=(1,))(inputs), name=name)


def _decode(code):
    return {i for i in range(GLOBAL_BATCH) if int(code) >> i & 1}


def _run_per_replica(strategy, fn, images):
    dataset = tf.data.Dataset.from_tensors(images)
    distributed = next(iter(strategy.experimental_distribute_dataset(dataset)))
    outputs = tf.function(lambda x: strategy.run(fn, args=(x,)))(distributed)
    return [
        np.concatenate([r.numpy() for r in strategy.experimental_local_results(view)])
        for view in outputs
    ]


@pytest.mark.parametrize("bn_groups", [1, 2])
def test_key_groups_are_a_cross_replica_permutation(bn_groups):
    strategy = two_replicas()
    with strategy.scope():
        model = MomentumContrast(
            _group_probe("query"), _group_probe("key"), embedding_dim=1, queue_size=4,
            bn_groups=bn_groups, shuffle_bn=True, seed=1,
        )
        model.compile(optimizer=TorchSGD(0.1))
    images = np.arange(GLOBAL_BATCH, dtype="float32").reshape(-1, 1, 1, 1)
    group_size = GLOBAL_BATCH // 2 // bn_groups
    crossings = 0
    for step in range(3):
        model.optimizer.iterations.assign(step)
        views = _run_per_replica(
            strategy, lambda x: model._forward_keys({"view1": x, "view2": x}), images
        )
        for keys in views:
            groups = [_decode(code) for code in keys[:, 0]]
            # Each key was computed in a group holding its own image, of the right size,
            # and the groups partition the global batch: a true permutation, undone.
            for image, group in enumerate(groups):
                assert image in group and len(group) == group_size
            distinct = {frozenset(g) for g in groups}
            assert len(distinct) == 2 * bn_groups
            assert set().union(*distinct) == set(range(GLOBAL_BATCH))
            # Replica 0 holds images 0-3: how many of its keys saw replica 1's images.
            crossings += sum(bool(g - {0, 1, 2, 3}) for g in groups[:4])
        assert not np.array_equal(views[0], views[1])  # views shuffled independently
    assert crossings > 0

    # All replicas draw the same permutation.
    permutations = strategy.experimental_local_results(
        strategy.run(tf.function(lambda: model._key_permutation(GLOBAL_BATCH, 0)))
    )
    np.testing.assert_array_equal(permutations[0].numpy(), permutations[1].numpy())
    np.testing.assert_array_equal(np.sort(permutations[0].numpy()), np.arange(GLOBAL_BATCH))


def test_unshuffled_keys_equal_unshuffled_forward_when_bn_ignores_the_batch():
    # With BN in inference mode the batch composition does not matter, so the shuffled,
    # sliced, gathered and unshuffled keys must equal the key network on the plain batch.
    strategy = two_replicas()
    with strategy.scope():
        model = build_small_model("vader", bn_groups=2, shuffle_bn=True)
    for layer in model.key_model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # Keras 3: inference-mode BN
    batch = synthetic_batch(GLOBAL_BATCH, seed=0)
    model.optimizer.iterations.assign(5)
    keys = _run_per_replica(
        strategy, lambda b: model._forward_keys(b), {k: batch[k] for k in ("view1", "view2", "points1", "points2")}
    )
    for view in (1, 2):
        maps = model.key_model(batch[f"view{view}"], training=False).numpy()
        expected = [reference.unit(reference.bilinear(m, p)) for m, p in zip(maps, batch[f"points{view}"])]
        np.testing.assert_allclose(keys[view - 1], np.stack(expected), rtol=1e-4, atol=1e-4)
