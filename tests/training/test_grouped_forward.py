"""The one-call forward passes of the train step against the per-group calls they replace.

The reference below is a copy of the forward passes before ghost batch norm and before
shuffle BN reduced the keys on their own replica: each network called once per view and
BN group, the key network's whole outputs all-gathered and put back in order, and the
keys sampled (`reduce_keys`) only after the gather. The new passes must give the same key
rows, query outputs, query gradients and BN moving statistics (float32), on 1 and 2
replicas, symmetric and one-direction, with the shuffle permutation.
"""

import numpy as np
import pytest
import tensorflow as tf

from tests.training.helpers import build_small_model, synthetic_batch, two_replicas
from vader_tf.training.momentum_contrast import views_forward
from vader_tf.training.pretrain import dtype_policy

GLOBAL_BATCH = 8


# --- reference: the forward passes as they were --------------------------------------------


def _old_grouped_forward(model, images, num_groups):
    if num_groups == 1:
        return model(images, training=True)
    return tf.nest.map_structure(
        lambda *chunks: tf.concat(chunks, axis=0),
        *[model(chunk, training=True) for chunk in tf.split(images, num_groups)],
    )


def _old_shuffled_forward(model, images, num_groups, permutation, replica):
    num_replicas = replica.num_replicas_in_sync

    def gather_replicas(x):
        return replica.all_gather(tf.identity(x), axis=0) if num_replicas > 1 else x

    local_size = tf.shape(images)[0]
    start = tf.cast(replica.replica_id_in_sync_group, tf.int32) * local_size
    mine = permutation[start : start + local_size]
    outputs = _old_grouped_forward(model, tf.gather(gather_replicas(images), mine), num_groups)
    inverse = tf.math.invert_permutation(permutation)
    return tf.nest.map_structure(
        lambda x: tf.gather(gather_replicas(x), inverse[start : start + local_size]), outputs
    )


def _old_forward_keys(model, data):
    replica = tf.distribute.get_replica_context()
    num_replicas = replica.num_replicas_in_sync
    key_views = {k for _, k in model.directions}
    outputs = []
    for view_index, images in enumerate((data["view1"], data["view2"])):
        if view_index not in key_views:
            outputs.append(None)
            continue
        if model.shuffle_bn and num_replicas * model.bn_groups > 1:
            permutation = model._key_permutation(num_replicas * tf.shape(images)[0], view_index)
            keys = _old_shuffled_forward(
                model.key_model, images, model.bn_groups, permutation, replica
            )
        else:
            keys = _old_grouped_forward(model.key_model, images, model.bn_groups)
        # Whole outputs gathered, then reduced (VADeR: sampled at the points).
        outputs.append(model.reduce_keys(keys, model.key_reduction_inputs(data, view_index)))
    return outputs


def _old_query_forward(model, data):
    query_views = {q for q, _ in model.directions}
    return [
        _old_grouped_forward(model.query_model, v, model.bn_groups) if i in query_views else None
        for i, v in enumerate((data["view1"], data["view2"]))
    ]


def _new_query_forward(model, data):
    query_views = {q for q, _ in model.directions}
    views = [v if i in query_views else None for i, v in enumerate((data["view1"], data["view2"]))]
    return views_forward(model.query_model, views, model.bn_groups)


# --- the comparison --------------------------------------------------------------------


def _forward(model, data, forward_keys, forward_queries):
    """Keys, query outputs and the gradient of a fixed random projection of the queries."""
    keys = forward_keys(model, data)
    variables = model.query_model.trainable_variables
    with tf.GradientTape() as tape:
        queries = forward_queries(model, data)
        leaves = [x for x in tf.nest.flatten(queries) if x is not None]
        loss = tf.add_n(
            [
                tf.reduce_sum(
                    tf.cast(x, tf.float32)
                    * tf.random.stateless_normal(tf.shape(x), seed=[i, 7])
                )
                for i, x in enumerate(leaves)
            ]
        )
    gradients = tape.gradient(loss, variables)
    flat_keys = [x for x in tf.nest.flatten(keys) if x is not None]
    return flat_keys, leaves, gradients


def _run(model, strategy, batch, forward_keys, forward_queries):
    dataset = tf.data.Dataset.from_tensors(batch)
    distributed = next(iter(strategy.experimental_distribute_dataset(dataset)))

    @tf.function
    def step(data):
        return strategy.run(
            lambda d: _forward(model, d, forward_keys, forward_queries), args=(data,)
        )

    results = step(distributed)
    local = tf.nest.map_structure(
        lambda x: [r.numpy() for r in strategy.experimental_local_results(x)], results
    )
    statistics = [
        v.numpy().copy()
        for network in (model.query_model, model.key_model)
        for v in network.non_trainable_weights
        if "moving" in v.path
    ]
    return local, statistics


def _snapshot(model):
    return [v.numpy().copy() for v in model.weights]


def _restore(model, values):
    for variable, value in zip(model.weights, values):
        variable.assign(value)


# Each method on 1 and 2 replicas, each in both directions once (not the full product:
# every case traces two train steps).
CASES = [
    ("vader", True, 2),
    ("vader", False, 1),
    ("moco", True, 1),
    ("moco", False, 2),
    ("densecl", True, 2),
    ("densecl", False, 1),
]


@pytest.mark.parametrize(
    "method, symmetric_loss, replicas",
    CASES,
    ids=[f"{m}-{'symmetric' if s else 'one_direction'}-{r}replica" for m, s, r in CASES],
)
def test_one_call_per_network_equals_per_group_calls(method, symmetric_loss, replicas):
    strategy = two_replicas() if replicas == 2 else tf.distribute.get_strategy()
    # 2 BN groups per replica with the shuffle: 4 groups of 2 images on 2 replicas.
    with strategy.scope():
        model = build_small_model(
            method,
            queue_size=16,
            bn_groups=2,
            shuffle_bn=True,
            symmetric_loss=symmetric_loss,
            tiny=True,
        )
    model.optimizer.iterations.assign(3)
    batch = synthetic_batch(GLOBAL_BATCH, seed=4)
    before = _snapshot(model)
    expected, expected_statistics = _run(
        model, strategy, batch, _old_forward_keys, _old_query_forward
    )
    _restore(model, before)
    actual, actual_statistics = _run(
        model, strategy, batch, lambda m, d: m._forward_keys(d), _new_query_forward
    )
    (old_keys, old_queries, old_gradients), (keys, queries, gradients) = expected, actual
    assert len(keys) == len(old_keys) == (2 if symmetric_loss else 1) * (
        3 if method == "densecl" else 1
    )
    for new, old in zip(keys + queries, old_keys + old_queries):
        for n, o in zip(new, old):  # per replica
            np.testing.assert_allclose(n, o, rtol=1e-5, atol=2e-5)
    for new, old in zip(gradients, old_gradients):
        for n, o in zip(new, old):
            scale = max(np.abs(o).max(), 1e-6)
            np.testing.assert_allclose(n, o, rtol=1e-4, atol=1e-5 * scale)
    assert len(actual_statistics) == len(expected_statistics) > 0
    for new, old in zip(actual_statistics, expected_statistics):
        np.testing.assert_allclose(new, old, rtol=1e-5, atol=1e-5)
    # The statistics moved: the comparison saw training-mode batch norms.
    moved = [
        not np.allclose(a, b)
        for a, b, v in zip(_snapshot(model), before, model.weights)
        if "moving" in v.path
    ]
    assert any(moved)


def _casts_per_kernel(graph, kernels):
    """How many Cast ops read each of `kernels` (variables) in the traced `graph`."""
    handles = {id(v.handle): v.path for v in kernels}
    placeholder_to_path = {
        internal.name: handles[id(external)]
        for external, internal in graph.captures
        if id(external) in handles
    }
    counts = dict.fromkeys(placeholder_to_path.values(), 0)
    for op in graph.get_operations():
        if op.type != "ReadVariableOp" or op.inputs[0].name not in placeholder_to_path:
            continue
        path = placeholder_to_path[op.inputs[0].name]
        counts[path] += sum(c.type == "Cast" for c in op.outputs[0].consumers())
    return counts


def test_mixed_precision_casts_each_backbone_kernel_once_per_step():
    # Symmetric step, 2 BN groups with the shuffle: the per-group calls cast every kernel
    # 4 times per network; one call per network casts it once.
    with dtype_policy("mixed_bfloat16"):
        model = build_small_model("vader", bn_groups=2, shuffle_bn=True, tiny=True)
    batch = {k: tf.constant(v) for k, v in synthetic_batch(4).items()}
    specs = {k: tf.TensorSpec(v.shape, v.dtype) for k, v in batch.items()}
    graph = tf.function(model.train_step).get_concrete_function(specs).graph
    for backbone in (model.encoder.backbone, model.key_model.backbone):
        kernels = [w for w in backbone.weights if w.path.endswith("/kernel")]
        counts = _casts_per_kernel(graph, kernels)
        assert len(counts) == len(kernels) > 5
        assert set(counts.values()) == {1}, counts
