"""Training steps under mixed precision policies stay finite, update the network and, in
bfloat16, stay close to the float32 step."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.training import reference
from tests.training.helpers import build_small_model, run_steps, synthetic_batch
from vader_tf.models.encoder import build_encoder
from vader_tf.training.pretrain import PretrainConfig, build_model, dtype_policy


@pytest.fixture
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


# mixed_bfloat16 is covered below, against the float32 step.
@pytest.mark.parametrize("policy", ["mixed_float16"], indirect=True)
def test_vader_step_under_mixed_precision(policy):
    model = build_small_model("vader")
    assert model.query_model.compute_dtype == policy.split("_")[1]
    # The embedding and the queue stay float32 whatever the policy.
    assert model.query_model.output.dtype == "float32"
    assert model.queue.dtype == "float32"
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    before = [w.numpy().copy() for w in model.query_model.trainable_weights]
    # Two steps: one network call per step sums both views' kernel gradients in float16
    # (before, two calls were summed in float32), so at the initial loss scale (2^15) the
    # first step may overflow and be skipped while the scale halves.
    metrics = run_steps(model, tf.distribute.get_strategy(), [synthetic_batch(4)] * 2)[-1]
    assert np.isfinite(metrics["loss"])
    after = [w.numpy() for w in model.query_model.trainable_weights]
    assert any(not np.allclose(a, b) for a, b in zip(before, after))


def test_build_model_applies_the_configs_policy_and_leaves_the_global_one():
    config = PretrainConfig(
        image_size=64, batch_size=4, decoder_channels=16, embedding_dim=8, queue_size=64,
        mixed_precision="mixed_bfloat16",
    )
    model = build_model(config)
    assert model.query_model.compute_dtype == "bfloat16"
    assert model.query_model.variable_dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"


def _small_vader(mixed_precision):
    with dtype_policy(mixed_precision):
        return build_small_model("vader")


def test_bfloat16_vader_step_is_finite_and_close_to_float32():
    reference = _small_vader("none")
    model = _small_vader("mixed_bfloat16")
    assert model.query_model.compute_dtype == "bfloat16"
    # The embedding and the queue stay float32.
    assert model.query_model.output.dtype == "float32"
    # Same start: weights (float32 under both policies) and queue copied over.
    model.query_model.set_weights(reference.query_model.get_weights())
    model.key_model.set_weights(reference.key_model.get_weights())
    model.queue.assign(reference.queue)
    batch = {k: tf.constant(v) for k, v in synthetic_batch(4).items()}
    key_before = [w.numpy().copy() for w in model.key_model.weights]

    expected = {k: float(v) for k, v in tf.function(reference.train_step)(batch).items()}
    metrics = {k: float(v) for k, v in tf.function(model.train_step)(batch).items()}

    assert all(np.isfinite(v) for v in metrics.values()), metrics
    weights = model.query_model.weights + model.key_model.weights
    assert all(np.all(np.isfinite(w.numpy())) for w in weights)
    # bfloat16 keeps 8 significant bits (relative rounding 2^-9 = 0.2% per operation).
    # Through the network that leaves the per-pixel embeddings at a cosine of 0.999 to
    # the float32 ones on average (0.96 at worst), and here moved the mean positive
    # similarity by 0.0024 and the loss by 0.009 (measured). The loss is 1-Lipschitz in
    # the logits = similarities / 0.2, so similarity errors of ~0.005 on query and key
    # together move it by up to ~5 x 0.01 = 0.05: the tolerance. It catches a step that
    # overflows, goes NaN or mis-casts the loss; the EMA and queue checks below catch
    # float32 state lost to bfloat16 (an all-bfloat16 policy fails them).
    assert metrics["loss"] == pytest.approx(expected["loss"], abs=0.05)
    assert metrics["positive_similarity"] == pytest.approx(
        expected["positive_similarity"], abs=0.01
    )
    # The EMA runs in float32: key <- m * key + (1 - m) * query, to float32 round-off.
    # (The key network started as a copy of the query network, so the query moved if
    # its weights now differ from the key's old ones.)
    trainable = [i for i, w in enumerate(model.query_model.weights) if w.trainable]
    assert any(
        not np.allclose(model.query_model.weights[i].numpy(), key_before[i]) for i in trainable
    )
    for i in trainable:
        query_after = model.query_model.weights[i].numpy()
        ema = model.momentum * key_before[i] + (1 - model.momentum) * query_after
        np.testing.assert_allclose(model.key_model.weights[i].numpy(), ema, rtol=1e-5, atol=1e-7)
    # The keys entering the queue are stored in float32: unit length to float32 round-off.
    newest = model.queue.numpy()[: int(model.queue_pointer.numpy())]
    assert len(newest) and model.queue.dtype == "float32"
    np.testing.assert_allclose(np.linalg.norm(newest, axis=1), 1.0, atol=1e-5)


def test_bfloat16_loss_and_queue_are_float32_functions_of_the_embeddings():
    """The network computes in bfloat16, but InfoNCE and the queue must not: given the
    bfloat16 networks' own (float32) embeddings, the step's loss and enqueued keys match
    a float64 NumPy InfoNCE to float32 precision. A loss, logits or queue rounded to
    bfloat16 (8 significant bits: relative errors ~4e-3) fails the 1e-5 tolerances."""
    # One direction, one BN group, no shuffle: the reference can run each network on one
    # view alone, exactly as the step does.
    batch = synthetic_batch(4, seed=5)
    with dtype_policy("mixed_bfloat16"):
        model = build_small_model("vader", queue_size=48, symmetric_loss=False)
    assert model.query_model.compute_dtype == "bfloat16"
    queue = model.queue.numpy()
    # Keep the embeddings the step itself computes (graph-mode bfloat16 kernels round
    # differently from eager calls, so a separate forward pass would not reproduce them).
    # The key network's outputs reach `contrastive_rows` already sampled at the points
    # (`VADeR.reduce_keys`, float32): `[B, P, D]` unit keys.
    maps = {"query": tf.Variable(tf.zeros((4, 16, 16, 8))), "key": tf.Variable(tf.zeros((4, 8, 8)))}
    contrastive_rows = model.contrastive_rows

    def recording_rows(data, query_outputs, key_outputs):
        maps["query"].assign(query_outputs[0])
        maps["key"].assign(key_outputs[1])
        return contrastive_rows(data, query_outputs, key_outputs)

    model.contrastive_rows = recording_rows
    (metrics,) = run_steps(model, tf.distribute.get_strategy(), [batch])
    query_maps, keys = maps["query"].numpy(), maps["key"].numpy()
    assert model.query_model.output.dtype == model.key_model.output.dtype == "float32"
    losses, enqueued = [], []
    for image in range(4):
        q = reference.unit(reference.bilinear(query_maps[image], batch["points1"][image]))
        k = keys[image].astype("float64")
        np.testing.assert_allclose(np.linalg.norm(k, axis=1), 1.0, atol=1e-6)
        losses.extend(reference.info_nce(q, k, queue, 0.2)[0])
        enqueued.append(k[:4])  # queue_points_per_image=4
    enqueued = np.concatenate(enqueued)
    assert metrics["loss"] == pytest.approx(np.mean(losses), rel=1e-5)
    assert model.queue.dtype == "float32"
    np.testing.assert_allclose(model.queue.numpy()[: len(enqueued)], enqueued, atol=1e-5)


def test_an_encoder_trained_in_bfloat16_reloads_under_the_loading_policy(tmp_path):
    # A run's saved architecture must not carry its training precision: rebuilt under
    # float32 (evaluation, export), every layer computes in float32, backbone included.
    with dtype_policy("mixed_bfloat16"):
        encoder = build_encoder("resnet18", decoder_channels=16, head_hidden_dim=16)
        assert encoder.backbone.compute_dtype == "bfloat16"
        config = keras.saving.serialize_keras_object(encoder)
        encoder.save(tmp_path / "encoder.keras")
    for rebuilt in (
        keras.saving.deserialize_keras_object(config),
        keras.saving.load_model(tmp_path / "encoder.keras"),
    ):
        compute_dtypes = {layer.dtype_policy.compute_dtype for layer in rebuilt._flatten_layers()}
        assert compute_dtypes == {"float32"}, compute_dtypes
    with dtype_policy("mixed_bfloat16"):
        rebuilt = keras.saving.deserialize_keras_object(config)
    assert rebuilt.backbone.compute_dtype == "bfloat16"
