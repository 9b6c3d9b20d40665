"""VADeR's optional terms (image-level and coarse-level, issue 20's method variants) and
PixPro's pixel propagation: the loss, weights and queues against a NumPy re-derivation
from the networks' outputs, one replica against two, validation, and a run through the
real loop."""

import re

import keras
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
from vader_tf.run_dir import load_encoder
from vader_tf.training.moco import image_term
from vader_tf.training.pretrain import PretrainConfig, pretrain

LAMBDA = 0.3  # global weight
COARSE = 0.4  # the coarse level's share of the dense loss (not 0.5: swaps would show)
IMAGE_SIZE = 64  # stride-4 grid 16 x 16, P4 grid 4 x 4
TERMS = dict(global_loss_weight=LAMBDA, global_queue_size=6, coarse_level="P4",
             coarse_loss_weight=COARSE)
# Not PixPro's 2, so that a power ignored or fixed at 2 would show.
PROPAGATION = dict(propagation_power=3.0)


def _outputs(network, batch):
    return [
        {k: v.numpy() for k, v in network(batch[view], training=True).items()}
        for view in ("view1", "view2")
    ]


def _pixel_rows(maps, points, directions, query, key, valid, scale=1.0):
    """Unit query and positive rows of the valid pairs, sampled at `points * scale` (the
    stride-4 grid coordinates mapped to a coarser grid: cell j of stride s is centred on
    input s * j + 0.5, so the stride-4 coordinate g is input 4 g + 0.5, which is the
    stride-16 coordinate 4 g / 16)."""
    queries, positives = [], []
    for q, k in directions:
        for image in np.flatnonzero(valid):
            queries.append(reference.unit(reference.bilinear(
                query[q][maps][image], points[q][image] * scale)))
            positives.append(reference.unit(reference.bilinear(
                key[k][maps][image], points[k][image] * scale)))
    return np.concatenate(queries), np.concatenate(positives)


@pytest.mark.parametrize("symmetric_loss", [True, False], ids=["symmetric", "one_direction"])
def test_terms_losses_weights_and_queues_match_numpy(symmetric_loss):
    model = build_small_model("vader", queue_size=20, symmetric_loss=symmetric_loss, **TERMS)
    assert [t.name for t in model.terms] == ["dense", "P4", "global"]
    first, second = (synthetic_batch(4, IMAGE_SIZE, seed=s, invalid=(2,)) for s in (0, 1))
    model.train_step({k: tf.constant(v) for k, v in first.items()})
    for metric in model.metrics:
        metric.reset_state()
    queues = {n: getattr(model, n).numpy().copy() for n in ("queue", "P4_queue", "global_queue")}
    pointers = {n: int(getattr(model, f"{n}_pointer").numpy()) for n in queues}
    query, key = _outputs(model.query_model, second), _outputs(model.key_model, second)
    metrics = run_steps(model, tf.distribute.get_strategy(), [second])[0]

    directions = ((0, 1), (1, 0)) if symmetric_loss else ((0, 1),)
    points = (second["points1"], second["points2"])
    valid = second["valid"]
    expected = {}
    for name, maps, scale, queue in (
        ("dense", "dense", 1.0, queues["queue"]),
        ("P4", "coarse", 4 / 16, queues["P4_queue"]),
    ):
        q, k = _pixel_rows(maps, points, directions, query, key, valid, scale)
        expected[name] = np.mean(reference.info_nce(q, k, queue, 0.2)[0])
    global_q = np.concatenate([query[q]["global"] for q, _ in directions])
    global_k = np.concatenate([key[k]["global"] for _, k in directions])
    global_rows, _ = reference.info_nce(global_q, global_k, queues["global_queue"], 0.2)
    expected["global"] = np.mean(global_rows)
    for name, value in expected.items():
        assert metrics[f"{name}_loss"] == pytest.approx(value, rel=1e-4), name
    total = (1 - LAMBDA) * ((1 - COARSE) * expected["dense"] + COARSE * expected["P4"])
    total += LAMBDA * expected["global"]
    assert metrics["loss"] == pytest.approx(total, rel=1e-4)
    # The coarse term reads its own level: sampled at the unscaled points it differs.
    q, k = _pixel_rows("coarse", points, directions, query, key, valid, 1.0)
    unscaled, _ = reference.info_nce(q, k, queues["P4_queue"], 0.2)
    assert abs(np.mean(unscaled) - expected["P4"]) > 1e-3

    # Pixel queues: the first 4 view-2 keys of each valid image (3 images: 12 keys,
    # wrapping the ring of 20 from the pointer); the global queue: all 4 images' keys.
    for name, maps, scale in (("queue", "dense", 1.0), ("P4_queue", "coarse", 0.25)):
        keys = np.concatenate([
            reference.unit(reference.bilinear(key[1][maps][i], second["points2"][i][:4] * scale))
            for i in np.flatnonzero(valid)
        ])
        slots = (pointers[name] + np.arange(12)) % 20
        np.testing.assert_allclose(getattr(model, name).numpy()[slots], keys, atol=1e-5)
    slots = (pointers["global_queue"] + np.arange(4)) % 6
    np.testing.assert_allclose(model.global_queue.numpy()[slots], key[1]["global"], atol=1e-5)


def _propagated(query_map, transformed_map, points, power):
    """PixPro's propagation at `points` of one image, from its definition: the unit query
    at each point weights every cell's transformed feature by its clipped cosine to the
    query, raised to `power`."""
    cells = reference.unit(query_map.reshape(-1, query_map.shape[-1]))
    weights = np.maximum(reference.unit(reference.bilinear(query_map, points)) @ cells.T, 0)
    return reference.unit(weights**power @ transformed_map.reshape(len(cells), -1))


@pytest.mark.parametrize("symmetric_loss", [True, False], ids=["symmetric", "one_direction"])
def test_propagated_queries_match_numpy(symmetric_loss):
    model = build_small_model("vader", queue_size=20, symmetric_loss=symmetric_loss, **PROPAGATION)
    assert [t.name for t in model.terms] == ["dense"]
    first, second = (synthetic_batch(4, IMAGE_SIZE, seed=s, invalid=(2,)) for s in (0, 1))
    model.train_step({k: tf.constant(v) for k, v in first.items()})
    for metric in model.metrics:
        metric.reset_state()
    queue = model.queue.numpy().copy()
    transform = model.query_model.get_layer("propagation_transform").kernel.numpy().copy()
    query, key = _outputs(model.query_model, second), _outputs(model.key_model, second)
    metrics = run_steps(model, tf.distribute.get_strategy(), [second])[0]

    directions = ((0, 1), (1, 0)) if symmetric_loss else ((0, 1),)
    points = (second["points1"], second["points2"])
    queries, positives = [], []
    for q, k in directions:
        for image in np.flatnonzero(second["valid"]):
            queries.append(_propagated(
                query[q]["dense"][image], query[q]["propagation"][image], points[q][image], 3.0
            ))
            positives.append(reference.unit(reference.bilinear(
                key[k]["dense"][image], points[k][image])))
    queries, positives = np.concatenate(queries), np.concatenate(positives)
    expected = np.mean(reference.info_nce(queries, positives, queue, 0.2)[0])
    assert metrics["loss"] == pytest.approx(expected, rel=1e-4)
    # The plain queries (no propagation) give another loss, so the check can fail.
    plain, _ = _pixel_rows("dense", points, directions, query, key, second["valid"])
    assert abs(np.mean(reference.info_nce(plain, positives, queue, 0.2)[0]) - expected) > 1e-3
    # The transform g is trained by the term.
    after = model.query_model.get_layer("propagation_transform").kernel.numpy()
    assert np.max(np.abs(after - transform)) > 0


def test_image_term_on_the_decoder_pools_the_decoder_and_trains_it():
    model = build_small_model(
        "vader", queue_size=20, global_loss_weight=0.5, global_level="decoder"
    )
    batch = synthetic_batch(4, IMAGE_SIZE)
    query = _outputs(model.query_model, batch)
    # The global embedding is the image head on the average of the decoder output
    # (oracle: the head's Dense layers applied by hand to the pooled decoder map).
    decoder = model.encoder.pyramid_outputs["decoder"]
    decoder_maps = keras.Model(model.encoder.input, decoder)(batch["view1"], training=True)
    pooled = np.asarray(decoder_maps).mean(axis=(1, 2))
    hidden = model.query_model.get_layer("image_mlp_hidden")
    output = model.query_model.get_layer("image_mlp_output")
    expected = reference.unit(np.asarray(output(hidden(pooled))))
    np.testing.assert_allclose(query[0]["global"], expected, atol=1e-5)
    # Only the image-level term reaches the decoder through this path: with the pixel
    # term's weight at 0 the decoder's smoothing convolution still gets a gradient.
    data = {k: tf.constant(v) for k, v in batch.items()}
    with tf.GradientTape() as tape:
        outputs = [model.query_model(data[v], training=True) for v in ("view1", "view2")]
        keys = [model.key_model(data[v], training=True)["global"] for v in ("view1", "view2")]
        term = image_term("global", model.directions, [o["global"] for o in outputs], keys)
        loss = tf.reduce_sum(term.queries * term.positives)
    smooth = model.encoder.get_layer("decoder_smooth_conv").kernel
    assert float(tf.reduce_max(tf.abs(tape.gradient(loss, smooth)))) > 0


@pytest.mark.parametrize(
    "terms, queues",
    [(TERMS, ("queue", "P4_queue", "global_queue")), (PROPAGATION, ("queue",))],
    ids=["terms", "propagation"],
)
def test_two_replicas_equal_one_replica(terms, queues):
    batches = [synthetic_batch(4, IMAGE_SIZE, seed=s) for s in range(2)]

    def train(strategy, bn_groups):
        with strategy.scope():
            model = build_small_model(
                "vader", queue_size=16, bn_groups=bn_groups, shuffle_bn=True, tiny=True, **terms
            )
        return model, run_steps(model, strategy, batches)

    one, one_metrics = train(tf.distribute.get_strategy(), 2)
    two, two_metrics = train(two_replicas(), 1)
    # Rounding drift as in tests/training/test_distributed.py (updates are ~1e-2; a term
    # scaled wrongly for the replica count would be off by that much).
    for a, b in zip(one.query_model.trainable_weights, two.query_model.trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-3, err_msg=a.path)
    for name in queues:
        np.testing.assert_allclose(
            getattr(one, name).numpy(), getattr(two, name).numpy(), atol=1e-5, err_msg=name
        )
    for one_step, two_step in zip(one_metrics, two_metrics):
        for name, value in one_step.items():
            assert two_step[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


def test_without_terms_the_model_is_plain_vader():
    model = build_small_model("vader")
    assert model.query_model is model.encoder
    assert [t.name for t in model.terms] == ["contrast"]
    assert "loss" in [m.name for m in model.metrics]


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(global_loss_weight=1.0), "global_loss_weight must be in [0, 1)"),
        (dict(coarse_level="P2"), "coarse_level must be one of P3, P4, P5"),
        (dict(method="moco", global_loss_weight=0.5), "global_loss_weight must be 0.0"),
        (dict(method="densecl", coarse_level="P4"), "coarse_level must be None"),
        (dict(global_level="P4"), "global_level must be one of P5, decoder"),
        (dict(method="moco", global_level="decoder"), "global_level must be P5"),
        (dict(coarse_loss_weight=1.5), "coarse_loss_weight must be in [0.0, 1.0]"),
        (dict(propagation_power=0.5), "propagation_power must be at least 1"),
        (dict(method="moco", propagation_power=2.0), "propagation_power must be None"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_flag(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        PretrainConfig(model_dir="unused", **fields).validate()


def test_a_run_with_both_terms_trains_and_exports_the_plain_encoder(tmp_path):
    write_smooth_photos(tmp_path, 6)
    config = small_config(tmp_path / "run", tmp_path, train_steps=2, **TERMS, **PROPAGATION)
    _, history = pretrain(config)
    assert {"dense_loss", "P4_loss", "global_loss"} <= set(history[-1])
    assert np.isfinite(history[-1]["loss"])
    encoder = load_encoder(str(tmp_path / "run"))
    names = {layer.name for layer in encoder._flatten_layers()}
    assert "decoder_output" in names
    heads = {
        "coarse_hidden", "coarse_output", "image_mlp_hidden", "image_embedding",
        "propagation_transform",
    }
    assert not names & heads
