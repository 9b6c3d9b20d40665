"""The pretraining optimiser against a NumPy re-derivation of PyTorch's SGD update."""

import math

import numpy as np
import pytest
import tensorflow as tf

from vader_tf.training import pretrain


def torch_sgd_reference(weights, gradients, learning_rates, momentum, weight_decay):
    """`torch.optim.SGD(momentum, weight_decay)`, dampening 0, no Nesterov, in NumPy."""
    w = weights.astype(np.float64).copy()
    buffer = np.zeros_like(w)
    for g, lr in zip(gradients, learning_rates):
        g = g + weight_decay * w
        buffer = momentum * buffer + g
        w = w - lr * buffer
    return w


@pytest.mark.parametrize("warmup_steps", [0, 2])
def test_pretrain_optimizer_is_torch_sgd_with_coupled_weight_decay(warmup_steps):
    steps, peak = 6, 0.5
    config = pretrain.PretrainConfig(
        train_steps=steps,
        base_learning_rate=peak,
        batch_size=256,
        warmup_steps=warmup_steps,
        weight_decay=0.05,
        sgd_momentum=0.9,
    )
    optimizer = pretrain.build_optimizer(config)
    rng = np.random.default_rng(0)
    initial = rng.normal(size=(3, 4)).astype("float32")
    gradients = [rng.normal(size=(3, 4)).astype("float32") for _ in range(steps)]
    variable = tf.Variable(initial)
    for g in gradients:
        optimizer.apply([tf.constant(g)], [variable])

    def learning_rate(t):  # linear warm-up from 0, then cosine to 0
        if t < warmup_steps:
            return peak * t / warmup_steps
        return peak * 0.5 * (1 + math.cos(math.pi * (t - warmup_steps) / (steps - warmup_steps)))

    expected = torch_sgd_reference(
        initial, gradients, [learning_rate(t) for t in range(steps)], 0.9, 0.05
    )
    np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_weight_decay_alone_matches_pytorch_strength():
    # Zero gradients: only the decay acts. At momentum 0.9 the coupled decay shrinks the
    # weights about 10x more than lr * wd per step would.
    config = pretrain.PretrainConfig(
        train_steps=1000, base_learning_rate=0.1, batch_size=256, weight_decay=1e-2
    )
    optimizer = pretrain.build_optimizer(config)
    variable = tf.Variable(np.ones(2, "float32"))
    for _ in range(20):
        optimizer.apply([tf.zeros(2)], [variable])
    lrs = [0.1 * 0.5 * (1 + math.cos(math.pi * t / 1000)) for t in range(20)]
    expected = torch_sgd_reference(np.ones(2), [np.zeros(2)] * 20, lrs, 0.9, 1e-2)
    np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6)


def test_optimizer_config_round_trip():
    optimizer = pretrain.build_optimizer(pretrain.PretrainConfig(weight_decay=3e-4))
    clone = type(optimizer).from_config(optimizer.get_config())
    assert clone.l2_weight_decay == pytest.approx(3e-4)
    assert clone.weight_decay is None  # no decoupled decay on top


@pytest.mark.parametrize("scale", [0.1, 0.0])
def test_a_scaled_variable_takes_scale_times_the_torch_step(scale):
    # PyTorch's parameter group with lr = scale * lr: decay and momentum scaled alike.
    steps = 5
    config = pretrain.PretrainConfig(
        train_steps=steps, base_learning_rate=0.5, batch_size=256, weight_decay=0.05
    )
    optimizer = pretrain.build_optimizer(config)
    rng = np.random.default_rng(1)
    initial = [rng.normal(size=(2, 3)).astype("float32") for _ in range(2)]
    gradients = [
        [rng.normal(size=(2, 3)).astype("float32") for _ in range(2)] for _ in range(steps)
    ]
    scaled, plain = (tf.Variable(w) for w in initial)
    optimizer.scale_learning_rate([scaled], scale)
    for g in gradients:
        optimizer.apply([tf.constant(g[0]), tf.constant(g[1])], [scaled, plain])
    lrs = [0.5 * 0.5 * (1 + math.cos(math.pi * t / steps)) for t in range(steps)]
    for index, (variable, factor) in enumerate(((scaled, scale), (plain, 1.0))):
        expected = torch_sgd_reference(
            initial[index], [g[index] for g in gradients], [factor * lr for lr in lrs], 0.9, 0.05
        )
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-5, atol=1e-6)
    if scale == 0.0:
        np.testing.assert_array_equal(scaled.numpy(), initial[0])


def test_learning_rate_scales_are_set_before_the_optimizer_is_built():
    optimizer = pretrain.build_optimizer(pretrain.PretrainConfig())
    variable = tf.Variable(np.zeros(2, "float32"))
    with pytest.raises(ValueError, match="at least 0, got -1"):
        optimizer.scale_learning_rate([variable], -1.0)
    optimizer.build([variable])
    with pytest.raises(ValueError, match="before the optimizer is built"):
        optimizer.scale_learning_rate([variable], 0.5)


def test_backbone_learning_rate_scale_scales_the_backbones_first_step_on_two_replicas(tmp_path):
    # Momentum's buffer starts at 0, so a first step is lr * (g + wd * w): with the same
    # start and batch, the backbone moves `scale` times as far as at scale 1 and the
    # decoder and head as far; on 2 replicas, whose variables are mirrored. (Scale 0, a
    # frozen backbone, is checked on one replica against the NumPy reference above: each
    # 2-replica build and trace here costs about a minute of CI.)
    from tests.training.helpers import run_steps, small_config, synthetic_batch, two_replicas

    strategy = two_replicas()
    batch = synthetic_batch(4, num_points=8)
    deltas = {}
    for scale in (1.0, 0.25):
        config = small_config(tmp_path, tmp_path, backbone_learning_rate_scale=scale)
        with strategy.scope():
            model = pretrain.build_model(config)
        backbone = {id(v) for v in model.encoder.backbone.trainable_variables}
        variables = model.query_model.trainable_variables
        before = [v.numpy() for v in variables]
        run_steps(model, strategy, [batch])
        deltas[scale] = [
            (id(v) in backbone, v.numpy() - b) for v, b in zip(variables, before)
        ]
    parts = {True: "backbone", False: "decoder and head"}
    for in_backbone in (True, False):
        full = np.concatenate([d.ravel() for b, d in deltas[1.0] if b == in_backbone])
        assert np.linalg.norm(full) > 0, parts[in_backbone]
        moved = np.concatenate([d.ravel() for b, d in deltas[0.25] if b == in_backbone])
        factor = 0.25 if in_backbone else 1.0
        np.testing.assert_allclose(moved, factor * full, rtol=1e-3, atol=1e-6)


def test_backbone_learning_rate_scale_is_validated():
    with pytest.raises(ValueError, match=r"backbone_learning_rate_scale must be in \[0.0, 1.0\]"):
        pretrain.PretrainConfig(backbone_learning_rate_scale=1.5).validate()
