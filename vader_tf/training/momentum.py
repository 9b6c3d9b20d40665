"""Momentum (exponential moving average) update of the key network."""

import math

import tensorflow as tf


def momentum_at(step, base_momentum, total_steps=None, schedule="constant"):
    """The EMA momentum for `step`.

    `"constant"` keeps `base_momentum`; `"cosine"` raises it from `base_momentum` at step 0
    to 1 at `total_steps` along a half cosine (as in BYOL).
    """
    if schedule == "constant":
        return tf.constant(base_momentum, tf.float32)
    if schedule != "cosine":
        raise ValueError(f"Unknown momentum schedule {schedule!r}; use 'constant' or 'cosine'.")
    if not total_steps:
        raise ValueError("The cosine momentum schedule needs total_steps > 0.")
    progress = tf.minimum(tf.cast(step, tf.float32) / float(total_steps), 1.0)
    return 1.0 - (1.0 - base_momentum) * (tf.cos(math.pi * progress) + 1.0) / 2.0


def ema_update(target_variables, source_variables, momentum):
    """`target <- momentum * target + (1 - momentum) * source`, pairwise."""
    if len(target_variables) != len(source_variables):
        raise ValueError(
            f"EMA needs matching variable lists, got {len(target_variables)} targets and "
            f"{len(source_variables)} sources."
        )
    for target, source in zip(target_variables, source_variables):
        momentum_t = tf.cast(momentum, target.dtype)
        target.assign(momentum_t * target + (1.0 - momentum_t) * tf.cast(source, target.dtype))
