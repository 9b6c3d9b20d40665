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
