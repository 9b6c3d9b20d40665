"""`ImageNormalization` standardises in float32 whatever the compute dtype (issue 19,
item 5): under bfloat16 the output is the float32 standardisation rounded once."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from vader_tf.models.layers import IMAGENET_MEAN, IMAGENET_STD, ImageNormalization


def _pixels():
    # Every 8-bit value in each channel, and a few fractional ones.
    values = np.concatenate([np.arange(256.0), [0.5, 123.675, 254.25]]).astype("float32")
    return np.stack([values, values[::-1], np.roll(values, 7)], axis=-1)[None, :, None, :]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_normalisation_is_float32_then_rounded_once(dtype):
    pixels = _pixels()
    mean, std = (np.array(c, "float32") for c in (IMAGENET_MEAN, IMAGENET_STD))
    # NumPy's float32 arithmetic, then one rounding to the compute dtype.
    expected = tf.cast(tf.constant((pixels - mean) / std), dtype).numpy()
    policy = dtype if dtype == "float32" else f"mixed_{dtype}"
    layer = ImageNormalization(dtype=keras.DTypePolicy(policy))
    out = layer(tf.constant(pixels))
    assert out.dtype == dtype
    np.testing.assert_array_equal(out.numpy(), expected)
    # uint8 pixels (a decoded image) give the same values as float32 ones.
    whole = np.round(pixels)
    np.testing.assert_array_equal(
        layer(tf.constant(whole.astype("uint8"))).numpy(), layer(tf.constant(whole)).numpy()
    )
