"""DenseCL on the shared trainer: its loss and queues against a NumPy re-derivation, one
replica against two, and a short run through the real loop."""

import numpy as np
import pytest
import tensorflow as tf

from tests.training import reference
from tests.training.helpers import (
    build_small_model,
    run_steps,
    small_config,
    synthetic_batch,
    two_replicas,
    write_smooth_photos,
)
from vader_tf.run_dir import RunDir, load_encoder
from vader_tf.training.pretrain import pretrain

LAMBDA = 0.3  # not 0.5, so swapped term weights show
IMAGE_SIZE = 96  # a 3 x 3 C5 grid: 9 cells to match per image


def _outputs(network, batch):
    """The network's NumPy outputs on both views (BN in training mode, as in the step)."""
    return [
        {k: v.numpy() for k, v in network(batch[view], training=True).items()}
        for view in ("view1", "view2")
    ]


def _cells(feature_map):
    """`[B, h, w, C]` -> `[B, h * w, C]` unit rows."""
    return reference.unit(feature_map.reshape(len(feature_map), -1, feature_map.shape[-1]))


def _dense_rows(query, key, match):
    """Dense queries and their positives: for each query cell, the key cell `match` picks."""
    queries, positives = _cells(query["dense"]), _cells(key["dense"])
    indices = match(_cells(query["backbone"]), _cells(key["backbone"]))
    chosen = np.stack([positives[b][indices[b]] for b in range(len(positives))])
    return queries.reshape(-1, queries.shape[-1]), chosen.reshape(-1, chosen.shape[-1])


def _argmax_match(query_backbone, key_backbone):
    return np.stack([np.argmax(q @ k.T, axis=1) for q, k in zip(query_backbone, key_backbone)])


def _identity_match(query_backbone, key_backbone):
    return np.tile(np.arange(query_backbone.shape[1]), (len(query_backbone), 1))


def _expected_losses(query, key, queue, dense_queue, directions, match=_argmax_match):
    """`(global rows, dense rows)` of InfoNCE losses and correct flags, from NumPy."""
    global_q = np.concatenate([query[q]["global"] for q, _ in directions])
    global_k = np.concatenate([key[k]["global"] for _, k in directions])
    dense = [_dense_rows(query[q], key[k], match) for q, k in directions]
    dense_q = np.concatenate([d[0] for d in dense])
    dense_k = np.concatenate([d[1] for d in dense])
    results = []
    for q, k, negatives in ((global_q, global_k, queue), (dense_q, dense_k, dense_queue)):
        loss, _ = reference.info_nce(q, k, negatives, 0.2)
        correct = np.sum(q * k, 1) > (q @ negatives.T).max(1)
        results.append((loss, correct))
    return results


@pytest.mark.parametrize("symmetric_loss", [True, False], ids=["symmetric", "one_direction"])
def test_densecl_loss_and_both_queues_match_numpy(symmetric_loss):
    # Queues of 6 keys, 4 images per step: the second step's keys wrap around.
    model = build_small_model(
        "densecl", queue_size=6, loss_weight=LAMBDA, symmetric_loss=symmetric_loss
    )
    strategy = tf.distribute.get_strategy()
    first, second = (synthetic_batch(4, IMAGE_SIZE, seed=s) for s in (0, 1))
    model.train_step({k: tf.constant(v) for k, v in first.items()})  # eagerly: no trace
    for metric in model.metrics:
        metric.reset_state()
    # After one step the key network is no longer the query network's copy, so a mix-up
    # of the query's and the key's backbone in the matching would show.
    queue, dense_queue = model.queue.numpy().copy(), model.dense_queue.numpy().copy()
    query, key = _outputs(model.query_model, second), _outputs(model.key_model, second)
    metrics = run_steps(model, strategy, [second])[0]

    directions = ((0, 1), (1, 0)) if symmetric_loss else ((0, 1),)
    (global_loss, global_correct), (dense_loss, dense_correct) = _expected_losses(
        query, key, queue, dense_queue, directions
    )
    assert len(dense_loss) == len(directions) * 4 * 9
    assert metrics["global_loss"] == pytest.approx(np.mean(global_loss), rel=1e-4)
    assert metrics["dense_loss"] == pytest.approx(np.mean(dense_loss), rel=1e-4)
    expected_total = (1 - LAMBDA) * np.mean(global_loss) + LAMBDA * np.mean(dense_loss)
    assert metrics["loss"] == pytest.approx(expected_total, rel=1e-4)
    assert metrics["global_accuracy"] == pytest.approx(np.mean(global_correct), abs=1e-6)
    assert metrics["dense_accuracy"] == pytest.approx(np.mean(dense_correct), abs=1e-6)
    # The matching matters on this batch: position-for-position matching gives a loss
    # off by far more than the tolerance above.
    _, (identity_loss, _) = _expected_losses(
        query, key, queue, dense_queue, directions, _identity_match
    )
    assert abs(np.mean(identity_loss) - np.mean(dense_loss)) > 2e-3 * np.mean(dense_loss)

    # Each queue received view 2's keys of the 4 images at slots 4, 5, 0, 1 (ring of 6):
    # the global key embedding, and the dense key map averaged over its cells.
    pooled_dense = reference.unit(key[1]["dense"].mean(axis=(1, 2)))
    for variable, before, keys in (
        (model.queue, queue, key[1]["global"]),
        (model.dense_queue, dense_queue, pooled_dense),
    ):
        after = variable.numpy()
        np.testing.assert_allclose(after[[4, 5, 0, 1]], keys, atol=1e-5)
        np.testing.assert_array_equal(after[2:4], before[2:4])
    assert int(model.queue_pointer.numpy()) == int(model.dense_queue_pointer.numpy()) == 2


def test_two_replicas_equal_one_replica():
    # One replica with 2 BN groups of 2 == 2 replicas with 1 group of 2, shuffle BN on:
    # both draw the same permutation of the global batch.
    batches = [synthetic_batch(4, seed=s) for s in range(2)]

    def train(strategy, bn_groups):
        with strategy.scope():
            model = build_small_model(
                "densecl", queue_size=16, bn_groups=bn_groups, shuffle_bn=True,
                loss_weight=LAMBDA, tiny=True,
            )
        return model, run_steps(model, strategy, batches)

    one, one_metrics = train(tf.distribute.get_strategy(), 2)
    two, two_metrics = train(two_replicas(), 1)
    for a, b in zip(one.query_model.trainable_weights, two.query_model.trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=3e-4, err_msg=a.path)
    for name in ("queue", "dense_queue"):
        np.testing.assert_allclose(
            getattr(one, name).numpy(), getattr(two, name).numpy(), atol=1e-5, err_msg=name
        )
        assert int(getattr(one, f"{name}_pointer").numpy()) == 8
        assert int(getattr(two, f"{name}_pointer").numpy()) == 8
    for one_step, two_step in zip(one_metrics, two_metrics):
        assert set(one_step) == set(two_step)
        for name, value in one_step.items():
            assert two_step[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


def test_single_queue_checkpoints_keep_their_variable_names(tmp_path):
    # Checkpoints of single-queue models name the queue `model/queue` and its pointer
    # `model/queue_pointer`; DenseCL's first queue keeps those, its second is new.
    def checkpointed_queues(model):
        checkpoint = tf.train.Checkpoint(model=model)
        path = checkpoint.save(str(tmp_path / model.name / "ckpt"))
        return sorted(n for n, _ in tf.train.list_variables(path) if "queue" in n)

    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    single = ["model/queue" + suffix, "model/queue_pointer" + suffix]
    assert checkpointed_queues(build_small_model("moco", queue_size=8)) == single
    assert checkpointed_queues(build_small_model("densecl", queue_size=8)) == sorted(
        single + ["model/dense_queue" + suffix, "model/dense_queue_pointer" + suffix]
    )


def test_densecl_run_through_the_loop_is_loadable(tmp_path):
    write_smooth_photos(tmp_path, 4)
    config = small_config(
        tmp_path / "run", tmp_path, method="densecl", train_steps=2, densecl_loss_weight=LAMBDA
    )
    model, history = pretrain(config)
    assert [h["step"] for h in history] == [1, 2]
    assert {"loss", "global_loss", "dense_loss", "dense_accuracy"} <= set(history[-1])
    assert all(np.isfinite(h["loss"]) for h in history)
    assert RunDir(config.model_dir).read_run_config()["method"] == "densecl"
    encoder = load_encoder(config.model_dir)
    for loaded, trained in zip(encoder.weights, model.encoder.weights, strict=True):
        np.testing.assert_array_equal(loaded.numpy(), trained.numpy())
