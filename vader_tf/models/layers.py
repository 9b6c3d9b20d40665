"""Small layers the dense encoder is made of. TensorFlow backend only."""

import keras
import tensorflow as tf

from vader_tf.ops.grid import resize_grid

# ImageNet statistics in the 0..255 range, as used by torchvision and MoCo.
IMAGENET_MEAN = (0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0)
IMAGENET_STD = (0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0)


@keras.saving.register_keras_serializable(package="vader_tf")
class ImageNormalization(keras.layers.Layer):
    """Maps RGB pixels in [0, 255] to ImageNet-standardised values."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def call(self, images):
        images = tf.cast(images, self.compute_dtype)
        mean = tf.constant(self.mean, dtype=self.compute_dtype)
        std = tf.constant(self.std, dtype=self.compute_dtype)
        return (images - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


@keras.saving.register_keras_serializable(package="vader_tf")
class ResizeToReference(keras.layers.Layer):
    """Bilinearly resizes `inputs` to the spatial size of `reference`, read at run time.

    Resizes with `vader_tf.ops.grid.resize_grid`, so cell centres stay where the grid
    convention puts them (`s * j + 0.5`) at both strides. Unlike
    `UpSampling2D(interpolation="bilinear")`, this keeps working when H and W are unknown
    until the model runs (dynamic-shape SavedModel and TFLite export).
    """

    def call(self, inputs, reference):
        return resize_grid(inputs, tf.shape(reference)[1:3])

    def compute_output_shape(self, inputs_shape, reference_shape):
        return (inputs_shape[0], reference_shape[1], reference_shape[2], inputs_shape[3])


@keras.saving.register_keras_serializable(package="vader_tf")
class L2Normalize(keras.layers.Layer):
    """Normalises the last axis to unit length (computed in float32)."""

    def __init__(self, epsilon=1e-12, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, inputs):
        return tf.math.l2_normalize(tf.cast(inputs, tf.float32), axis=-1, epsilon=self.epsilon)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}
