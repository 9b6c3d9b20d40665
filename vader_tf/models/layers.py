"""Small layers the dense encoder is made of. TensorFlow backend only."""

import contextlib
import math
import threading

import keras
import tensorflow as tf

from vader_tf.ops.grid import resize_grid

# ImageNet statistics in the 0..255 range, as used by torchvision and MoCo.
IMAGENET_MEAN = (0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0)
IMAGENET_STD = (0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0)


@keras.saving.register_keras_serializable(package="vader_tf")
class ImageNormalization(keras.layers.Layer):
    """Maps RGB pixels in [0, 255] to ImageNet-standardised values.

    Normalises in float32 and only then casts to the compute dtype: in bfloat16 the
    constants themselves would round (123.675 -> 123.5, 58.395 -> 58.5), so a bfloat16
    run would see other inputs than float32 evaluation and export.
    """

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    @property
    def input_dtype(self):
        # Keras would cast the pixels to the compute dtype before `call`.
        return "float32"

    def call(self, images):
        images = tf.cast(images, tf.float32)
        mean = tf.constant(self.mean, dtype=tf.float32)
        std = tf.constant(self.std, dtype=tf.float32)
        return tf.cast((images - mean) / std, self.compute_dtype)

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


def join_unit_maps(maps, weights):
    """Unit-norm per-cell maps of one grid joined into one unit-norm map: each scaled by
    `sqrt(w_i / sum(w))` and concatenated on the last axis, so that the dot product of two
    cells is the `weights`-weighted mean of the maps' cosine similarities."""
    if len(maps) == 1:
        return maps[0]
    total = float(sum(weights))
    return tf.concat(
        [tf.cast(m, tf.float32) * math.sqrt(w / total) for m, w in zip(maps, weights)], axis=-1
    )


@keras.saving.register_keras_serializable(package="vader_tf")
class JoinUnitMaps(keras.layers.Layer):
    """`join_unit_maps` as a weightless layer: called on a list of unit-norm maps of one
    grid, returns their weighted concatenation (float32, unit norm per cell)."""

    def __init__(self, part_weights, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.part_weights = tuple(float(w) for w in part_weights)

    def call(self, maps):
        if len(maps) != len(self.part_weights):
            raise ValueError(f"Expected {len(self.part_weights)} maps, got {len(maps)}.")
        return join_unit_maps(list(maps), self.part_weights)

    def compute_output_shape(self, input_shapes):
        channels = [shape[-1] for shape in input_shapes]
        total = None if None in channels else sum(channels)
        return (*input_shapes[0][:-1], total)

    def get_config(self):
        return {**super().get_config(), "part_weights": list(self.part_weights)}


@keras.saving.register_keras_serializable(package="vader_tf")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that keeps half-precision activations in half
    precision.

    Under `mixed_bfloat16` (or `mixed_float16`) Keras' `BatchNormalization` casts its
    input up to float32, normalises with a dozen separate element-wise ops, and casts
    the result back down: in the bfloat16 VADeR step on a CPU with bfloat16 kernels that
    made batch norm 12-17% of the time, a quarter of the convolutions' share
    (`benchmarks/README.md`). This layer runs TensorFlow's fused
    batch-norm kernel instead, which reads and writes the activations in their own dtype
    and computes the statistics in float32 inside the kernel, forward and backward. The
    parameters and moving statistics stay float32 variables, updated exactly as Keras'
    layer updates them (biased batch variance). Same variables, arguments and config as
    `keras.layers.BatchNormalization`; float32 inputs, masks, renorm, synchronised BN
    and other than 4-D channels-last inputs take Keras' own path unchanged.

    It keeps Keras' class name on purpose: Keras names a layer's entry in weights files
    (`*.weights.h5`) after its class, so weights saved from either class load into the
    other (backbone weights files, run directories written before this layer existed).

    Ghost batch norm: inside `with batch_norm_groups(G):` a training-mode call splits
    the batch into G contiguous groups of equal size and normalises each with its own
    statistics, updating the moving averages once per group in order, exactly as G
    separate calls on the groups would (same kernel per group, float32 or fused). The
    network around it runs once on the whole batch. The group count is read when the call
    is traced; outside the context (inference, export, evaluation) it is 1.
    """

    def call(self, inputs, training=None, mask=None):
        groups = current_batch_norm_groups()
        if groups == 1 or not (training and self.trainable):
            return self._call_one_group(inputs, training=training, mask=mask)
        # Same statistics, updates and gradients as `groups` separate calls (the moving
        # averages follow the groups in order); `tf.split` refuses a batch it cannot
        # divide evenly.
        masks = [None] * groups if mask is None else tf.split(mask, groups)
        return tf.concat(
            [
                self._call_one_group(chunk, training=training, mask=chunk_mask)
                for chunk, chunk_mask in zip(tf.split(inputs, groups), masks)
            ],
            axis=0,
        )

    def _fused(self, inputs, mask):
        return (
            mask is None
            and not self.renorm
            and not getattr(self, "synchronized", False)
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and inputs.dtype in (tf.bfloat16, tf.float16)
        )

    def _call_one_group(self, inputs, training=None, mask=None):
        if not self._fused(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        scale = tf.convert_to_tensor(self.gamma) if self.scale else tf.ones([channels])
        offset = tf.convert_to_tensor(self.beta) if self.center else tf.zeros([channels])
        if training and self.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, scale, offset, epsilon=self.epsilon, is_training=True
            )
            # The kernel returns the Bessel-corrected variance; Keras' moving variance
            # follows the biased one.
            count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]), tf.float32)
            variance *= tf.maximum(count - 1.0, 1.0) / count
            self.moving_mean.assign(
                self.moving_mean * self.momentum + mean * (1.0 - self.momentum)
            )
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
            )
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs,
                scale,
                offset,
                mean=tf.convert_to_tensor(self.moving_mean),
                variance=tf.convert_to_tensor(self.moving_variance),
                epsilon=self.epsilon,
                is_training=False,
            )
        return tf.cast(outputs, self.compute_dtype)


_GROUPS = threading.local()


@contextlib.contextmanager
def batch_norm_groups(num_groups):
    """Training-mode calls of `BatchNormalization` in this block normalise each of
    `num_groups` contiguous groups of the batch with its own statistics (ghost batch norm).

    Read when a layer's call is traced, in the calling thread (each replica of a
    `tf.distribute` strategy sets its own). Inference-mode calls ignore it.
    """
    num_groups = int(num_groups)
    if num_groups < 1:
        raise ValueError(f"num_groups must be at least 1, got {num_groups}.")
    previous = current_batch_norm_groups()
    _GROUPS.value = num_groups
    try:
        yield
    finally:
        _GROUPS.value = previous


def current_batch_norm_groups():
    """The group count `batch_norm_groups` set for this thread (1 outside it)."""
    return getattr(_GROUPS, "value", 1)


def use_fused_batch_norm(model):
    """Makes every `keras.layers.BatchNormalization` of `model` our `BatchNormalization`.

    For networks built by code we do not own (keras-hub backbones create their own batch
    norms): the layers keep their variables, arguments and config; only how they compute
    half-precision inputs changes (see `BatchNormalization`). Returns `model`.
    """
    for layer in model._flatten_layers(include_self=False):
        if type(layer) is keras.layers.BatchNormalization:
            layer.__class__ = BatchNormalization
    return model
