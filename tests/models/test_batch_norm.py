"""`FusedBatchNormalization`: batch norm that keeps bfloat16 activations in bfloat16,
checked against a NumPy batch norm, Keras' own layer, and the encoder's traced graph."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from vader_tf.models import build_backbone, build_encoder
from vader_tf.models.layers import BatchNormalization as FusedBatchNormalization
from vader_tf.models.layers import batch_norm_groups, current_batch_norm_groups
from vader_tf.training.pretrain import dtype_policy


def _layer(cls, policy, channels=6, seed=0):
    rng = np.random.default_rng(seed)
    with dtype_policy(policy):
        layer = cls(epsilon=1e-5, momentum=0.9)
    layer.build((None, None, None, channels))
    layer.gamma.assign(rng.uniform(0.5, 2.0, channels).astype("float32"))
    layer.beta.assign(rng.normal(size=channels).astype("float32"))
    layer.moving_mean.assign(rng.normal(size=channels).astype("float32"))
    layer.moving_variance.assign(rng.uniform(0.5, 2.0, channels).astype("float32"))
    return layer


def _inputs(seed=1):
    # Values exactly representable in bfloat16, far from zero mean and unit variance.
    x = np.random.default_rng(seed).normal(3.0, 4.0, (4, 5, 7, 6)).astype("float32")
    return tf.cast(tf.cast(x, tf.bfloat16), tf.float32).numpy()


def _numpy_batch_norm(x, gamma, beta, mean, variance, epsilon=1e-5):
    return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta


@pytest.mark.parametrize("training", [True, False])
def test_bfloat16_output_and_moving_statistics_match_numpy(training):
    layer = _layer(FusedBatchNormalization, "mixed_bfloat16")
    x = _inputs().astype("float64")
    gamma, beta = layer.gamma.numpy(), layer.beta.numpy()
    old_mean, old_variance = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    outputs = layer(tf.cast(x, tf.bfloat16), training=training)
    assert outputs.dtype == tf.bfloat16
    if training:
        mean, variance = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))  # biased, as Keras
        np.testing.assert_allclose(layer.moving_mean.numpy(), 0.9 * old_mean + 0.1 * mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            layer.moving_variance.numpy(), 0.9 * old_variance + 0.1 * variance, rtol=1e-5, atol=1e-6
        )
    else:
        mean, variance = old_mean, old_variance
        np.testing.assert_array_equal(layer.moving_mean.numpy(), old_mean)
    expected = _numpy_batch_norm(x, gamma, beta, mean, variance)
    # One bfloat16 rounding of the output: relative 2^-8 at most.
    np.testing.assert_allclose(
        tf.cast(outputs, tf.float64).numpy(), expected, rtol=2**-8, atol=1e-3
    )


def test_bfloat16_gradients_match_keras_float32_layer():
    """Same parameters and input: gradients w.r.t. input, gamma and beta agree with
    Keras' layer computing in float32, to bfloat16 precision."""
    x = _inputs()
    cotangent = np.random.default_rng(2).normal(size=x.shape).astype("float32")
    gradients = {}
    for name, cls, policy in (
        ("fused", FusedBatchNormalization, "mixed_bfloat16"),
        ("keras", keras.layers.BatchNormalization, "none"),
    ):
        layer = _layer(cls, policy)
        inputs = tf.constant(x, tf.bfloat16 if name == "fused" else tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = tf.cast(layer(inputs, training=True), tf.float32)
            loss = tf.reduce_sum(outputs * cotangent)
        grads = tape.gradient(loss, [inputs, layer.gamma, layer.beta])
        gradients[name] = [tf.cast(g, tf.float32).numpy() for g in grads]
    for fused, reference in zip(gradients["fused"], gradients["keras"]):
        scale = np.abs(reference).max()
        np.testing.assert_allclose(fused, reference, atol=0.02 * scale)


def test_float32_inputs_take_keras_path_unchanged():
    keras_layer = _layer(keras.layers.BatchNormalization, "none")
    fused_layer = _layer(FusedBatchNormalization, "none")
    x = tf.constant(_inputs())
    np.testing.assert_array_equal(
        fused_layer(x, training=True).numpy(), keras_layer(x, training=True).numpy()
    )
    np.testing.assert_array_equal(fused_layer.moving_variance.numpy(), keras_layer.moving_variance.numpy())


def test_bfloat16_encoder_step_keeps_batch_norm_in_bfloat16():
    """No batch norm of the encoder (keras-hub backbone or decoder) casts its activations
    to float32 under mixed_bfloat16, forward or backward, and the encoder still
    round-trips through its config with fused batch norms."""
    with dtype_policy("mixed_bfloat16"):
        keras.utils.set_random_seed(0)
        encoder = build_encoder("resnet18", decoder_channels=16, head_hidden_dim=16, embedding_dim=8)
        rebuilt = encoder.__class__.from_config(encoder.get_config())
    for model in (encoder, rebuilt):
        norms = [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
        assert len(norms) == 21 and all(isinstance(l, FusedBatchNormalization) for l in norms)

    @tf.function
    def step(images):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(encoder(images, training=True))
        return tape.gradient(loss, encoder.trainable_variables)

    graph = step.get_concrete_function(tf.TensorSpec((2, 64, 64, 3), tf.float32)).graph
    ops = graph.get_operations()
    batch_norm_casts = [
        op.name
        for op in ops
        if op.type == "Cast" and "_bn" in op.name and op.inputs[0].dtype == tf.bfloat16
    ]
    assert not batch_norm_casts, batch_norm_casts[:5]
    fused = [op for op in ops if op.type.startswith("FusedBatchNorm")]
    assert fused and all(op.inputs[0].dtype == tf.bfloat16 for op in fused)


def test_weights_files_load_across_keras_and_our_batch_norm(tmp_path):
    """Backbone weights saved from an encoder (our batch norm) load into a plain keras-hub
    backbone (Keras' batch norm), and back: weights files name layers by class."""
    keras.utils.set_random_seed(0)
    encoder = build_encoder("resnet18", decoder_channels=16, head_hidden_dim=16, embedding_dim=8)
    ours = str(tmp_path / "ours.weights.h5")
    encoder.backbone.save_weights(ours)
    keras.utils.set_random_seed(1)
    plain = build_backbone("resnet18", weights=ours)
    assert not any(isinstance(l, FusedBatchNormalization) for l in plain._flatten_layers())
    for a, b in zip(plain.weights, encoder.backbone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    theirs = str(tmp_path / "theirs.weights.h5")
    plain.save_weights(theirs)
    keras.utils.set_random_seed(2)
    other = build_encoder("resnet18", decoder_channels=16, head_hidden_dim=16, embedding_dim=8)
    other.backbone.load_weights(theirs)
    for a, b in zip(other.backbone.weights, plain.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("policy", ["none", "mixed_bfloat16"])
def test_grouped_call_equals_one_call_per_group(policy):
    """Ghost batch norm: one call in 3 groups gives the outputs, input and parameter
    gradients and moving statistics of 3 calls on the groups, in order (the moving
    averages updated group after group), for Keras' float32 path and the fused one."""
    dtype = tf.bfloat16 if policy == "mixed_bfloat16" else tf.float32
    x = np.random.default_rng(3).normal(3.0, 4.0, (6, 5, 7, 6)).astype("float32")
    cotangent = np.random.default_rng(4).normal(size=x.shape).astype("float32")
    results = {}
    for name in ("grouped", "separate"):
        layer = _layer(FusedBatchNormalization, policy)
        inputs = tf.cast(tf.constant(x), dtype)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            if name == "grouped":
                with batch_norm_groups(3):
                    outputs = layer(inputs, training=True)
            else:
                outputs = tf.concat([layer(c, training=True) for c in tf.split(inputs, 3)], 0)
            loss = tf.reduce_sum(tf.cast(outputs, tf.float32) * cotangent)
        gradients = tape.gradient(loss, [inputs, layer.gamma, layer.beta])
        results[name] = [
            tf.cast(t, tf.float32).numpy()
            for t in [outputs, *gradients, layer.moving_mean, layer.moving_variance]
        ]
    for grouped, separate in zip(results["grouped"], results["separate"]):
        np.testing.assert_allclose(grouped, separate, rtol=1e-6, atol=1e-6)
    # Not the statistics of the whole batch.
    whole = _layer(FusedBatchNormalization, policy)
    whole_outputs = tf.cast(whole(tf.cast(tf.constant(x), dtype), training=True), tf.float32)
    assert not np.allclose(whole_outputs.numpy(), results["grouped"][0], atol=1e-2)


def test_groups_apply_to_training_calls_inside_the_context_only():
    layer = _layer(FusedBatchNormalization, "none")
    x = tf.constant(_inputs())
    plain_training = layer(x, training=True).numpy()
    inference = layer(x, training=False).numpy()
    with batch_norm_groups(2):
        assert current_batch_norm_groups() == 2
        np.testing.assert_array_equal(layer(x, training=False).numpy(), inference)
        assert not np.allclose(layer(x, training=True).numpy(), plain_training, atol=1e-3)
    assert current_batch_norm_groups() == 1
    with pytest.raises(ValueError, match="num_groups"):
        with batch_norm_groups(0):
            pass
