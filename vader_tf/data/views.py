"""MoCo v2 view augmentation, with the view geometry kept explicit.

A view is an integer crop box `(y0, x0, h, w)` of the original image, resized to
`S x S` (`S = ViewConfig.image_size`) with `tf.image.resize` bilinear (half-pixel centres,
no antialiasing), optionally flipped left-right, then photometrically jittered.

Geometry (continuous coordinates as in `vader_tf.ops.grid`: pixel `k` covers `[k, k+1)`):
view coordinate `(v_y, v_x)` shows original coordinate

    y = y0 + v_y * h / S,    x = x0 + u_x * w / S,   where u_x = S - v_x if flipped else v_x.

This is exact for half-pixel-centre resizing: view pixel centre `v + 0.5` samples the crop
at `(v + 0.5) * h / S`. `vader_tf.data.correspondence` relies on this and nothing else.

All randomness is stateless: every function takes a `[2]` int seed tensor, so a view is a
pure function of (image, seed) and pipelines are deterministic under parallel map.
"""

import dataclasses
import math

import tensorflow as tf

# ITU-R 601 luma weights, as used by torchvision's grayscale conversion.
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)


@dataclasses.dataclass(frozen=True)
class ViewConfig:
    """MoCo v2 augmentation settings. A probability or strength of 0 turns that step off.

    Attributes:
        image_size: side `S` of the square views.
        crop_scale: range of the crop area as a fraction of the image area.
        crop_aspect_ratio: range of the crop's width / height (sampled log-uniformly).
        crop_attempts: random crop draws before falling back to a centre crop.
        flip_prob: probability of a left-right flip.
        brightness, contrast, saturation: jitter factors are drawn from
            `[max(0, 1 - s), 1 + s]`.
        hue: hue shift drawn from `[-hue, hue]` (fraction of the colour wheel).
        color_jitter_prob: probability of applying the colour jitter (in random order).
        grayscale_prob: probability of converting to grayscale.
        blur_prob: probability of a Gaussian blur.
        blur_sigma: range of the blur's standard deviation, in view pixels.
        blur_kernel_fraction: blur kernel size as a fraction of `image_size` (made odd).
    """

    image_size: int = 224
    crop_scale: tuple = (0.2, 1.0)
    crop_aspect_ratio: tuple = (3.0 / 4.0, 4.0 / 3.0)
    crop_attempts: int = 10
    flip_prob: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    color_jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: tuple = (0.1, 2.0)
    blur_kernel_fraction: float = 0.1

    def geometric_only(self):
        """The same crops and flips with every photometric step turned off."""
        return dataclasses.replace(
            self, color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0
        )


def _sub_seed(seed, purpose):
    """An independent seed for one use (`purpose`, a small int) of `seed`."""
    return tf.random.experimental.stateless_fold_in(seed, purpose)


def _uniform(seed, shape, low, high):
    return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high)


def sample_crop_boxes(seed, image_hw, num_boxes, config):
    """Draws random-resized-crop boxes, torchvision style, vectorised.

    Each box takes the first of `config.crop_attempts` draws (area fraction uniform in
    `crop_scale`, aspect ratio log-uniform in `crop_aspect_ratio`) that fits in the image;
    if none fits, the largest centred box with a clamped aspect ratio.

    Args:
        seed: `[2]` int seed.
        image_hw: `[2]` int tensor, the original image's (height, width).
        num_boxes: how many independent boxes to draw.
        config: `ViewConfig`.

    Returns:
        `[num_boxes, 4]` int32 boxes `(y0, x0, h, w)` in original pixels.
    """
    height = tf.cast(image_hw[0], tf.float32)
    width = tf.cast(image_hw[1], tf.float32)
    shape = [num_boxes, config.crop_attempts]
    min_ratio, max_ratio = config.crop_aspect_ratio
    area = height * width * _uniform(_sub_seed(seed, 0), shape, *config.crop_scale)
    log_ratio = _uniform(_sub_seed(seed, 1), shape, math.log(min_ratio), math.log(max_ratio))
    ratio = tf.exp(log_ratio)
    crop_w = tf.round(tf.sqrt(area * ratio))
    crop_h = tf.round(tf.sqrt(area / ratio))
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    offset_fraction = _uniform(_sub_seed(seed, 2), shape + [2], 0.0, 1.0)
    crop_y = tf.floor(offset_fraction[..., 0] * (height - crop_h + 1))
    crop_x = tf.floor(offset_fraction[..., 1] * (width - crop_w + 1))
    attempts = tf.stack([crop_y, crop_x, crop_h, crop_w], axis=-1)
    first_fit = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    drawn = tf.gather(attempts, first_fit, axis=1, batch_dims=1)

    image_ratio = width / height
    too_tall = image_ratio < min_ratio
    too_wide = image_ratio > max_ratio
    fallback_h = tf.where(too_tall, tf.round(width / min_ratio), height)
    fallback_w = tf.where(too_wide, tf.round(height * max_ratio), width)
    fallback = tf.stack(
        [
            tf.floor((height - fallback_h) / 2),
            tf.floor((width - fallback_w) / 2),
            fallback_h,
            fallback_w,
        ]
    )
    boxes = tf.where(tf.reduce_any(fits, axis=1, keepdims=True), drawn, fallback[None])
    return tf.cast(boxes, tf.int32)


def sample_flips(seed, num_flips, flip_prob):
    """`[num_flips]` bools, each True with probability `flip_prob`."""
    return _uniform(seed, [num_flips], 0.0, 1.0) < flip_prob


def sample_independent_pair(seed, image_hw, config):
    """MoCo v2's view geometry: two independent random-resized crops and flips.

    No overlap rule: the two crops may be disjoint, as in MoCo v2's two calls of the same
    augmentation. (VADeR's pairs, which need matched points, are drawn by
    `vader_tf.data.correspondence.draw_view_pair` instead.)

    Returns:
        Dict with `box1`, `box2` (`[4]` int32 `(y0, x0, h, w)`), `flip1`, `flip2` (bool).
    """
    boxes = sample_crop_boxes(_sub_seed(seed, 0), image_hw, 2, config)
    flips = sample_flips(_sub_seed(seed, 1), 2, config.flip_prob)
    return {"box1": boxes[0], "box2": boxes[1], "flip1": flips[0], "flip2": flips[1]}


def render_view(image, box, flip, seed, config):
    """Crops, resizes, flips and photometrically augments one view.

    Args:
        image: `[H, W, 3]` image (any real dtype), values in [0, 255].
        box: `[4]` int32 `(y0, x0, h, w)` from `sample_crop_boxes`.
        flip: scalar bool.
        seed: `[2]` int seed for the photometric steps.
        config: `ViewConfig`.

    Returns:
        `[S, S, 3]` float32 view in [0, 255].
    """
    size = config.image_size
    crop = tf.slice(image, [box[0], box[1], 0], [box[2], box[3], 3])
    view = tf.image.resize(
        tf.cast(crop, tf.float32), [size, size], method="bilinear", antialias=False
    )
    view = tf.cond(flip, lambda: tf.reverse(view, axis=[1]), lambda: view)
    view = photometric_augment(view, seed, config)
    return tf.ensure_shape(view, [size, size, 3])


def _apply_with_probability(seed, probability, transform, image):
    if probability <= 0:
        return image
    apply = _uniform(seed, [], 0.0, 1.0) < probability
    return tf.cond(apply, lambda: transform(image), lambda: image)


def photometric_augment(view, seed, config):
    """Colour jitter, random grayscale and Gaussian blur on a float [0, 255] view."""
    view = _apply_with_probability(
        _sub_seed(seed, 0),
        config.color_jitter_prob,
        lambda image: color_jitter(image, _sub_seed(seed, 1), config),
        view,
    )
    view = _apply_with_probability(_sub_seed(seed, 2), config.grayscale_prob, _grayscale, view)
    if config.blur_prob > 0:
        sigma = _uniform(_sub_seed(seed, 4), [], *config.blur_sigma)
        kernel_size = _blur_kernel_size(config)
        view = _apply_with_probability(
            _sub_seed(seed, 3),
            config.blur_prob,
            lambda image: gaussian_blur(image, sigma, kernel_size),
            view,
        )
    return tf.clip_by_value(view, 0.0, 255.0)


def _luma(image):
    return tf.reduce_sum(image * tf.constant(_LUMA_WEIGHTS), axis=-1, keepdims=True)


def _grayscale(image):
    return tf.tile(_luma(image), [1, 1, 3])


def _blend(image, other, factor):
    return tf.clip_by_value(other + (image - other) * factor, 0.0, 255.0)


def color_jitter(image, seed, config):
    """torchvision-style ColorJitter: the enabled adjustments, in a random order.

    Brightness scales the image, contrast blends with the mean luma, saturation blends
    with the per-pixel luma, hue rotates the hue; values are clipped to [0, 255].
    """

    def factor(purpose, strength):
        return _uniform(_sub_seed(seed, purpose), [], max(0.0, 1.0 - strength), 1.0 + strength)

    adjustments = []
    if config.brightness > 0:
        brightness = factor(0, config.brightness)
        adjustments.append(lambda image: _blend(image, tf.zeros_like(image), brightness))
    if config.contrast > 0:
        contrast = factor(1, config.contrast)
        adjustments.append(lambda image: _blend(image, tf.reduce_mean(_luma(image)), contrast))
    if config.saturation > 0:
        saturation = factor(2, config.saturation)
        adjustments.append(lambda image: _blend(image, _luma(image), saturation))
    if config.hue > 0:
        hue_shift = _uniform(_sub_seed(seed, 3), [], -config.hue, config.hue)
        adjustments.append(
            lambda image: tf.image.adjust_hue(image / 255.0, hue_shift) * 255.0
        )
    if not adjustments:
        return image
    order = tf.argsort(_uniform(_sub_seed(seed, 4), [len(adjustments)], 0.0, 1.0))
    for step in range(len(adjustments)):
        image = tf.switch_case(
            order[step], [lambda adjust=adjust: adjust(image) for adjust in adjustments]
        )
    return tf.clip_by_value(image, 0.0, 255.0)


def _blur_kernel_size(config):
    size = max(3, int(round(config.blur_kernel_fraction * config.image_size)))
    return size if size % 2 else size + 1


def gaussian_blur(image, sigma, kernel_size):
    """Separable Gaussian blur of an `[H, W, C]` float image, reflecting at the borders."""
    radius = kernel_size // 2
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    weights = tf.exp(-0.5 * tf.square(offsets / sigma))
    weights /= tf.reduce_sum(weights)
    channels = tf.shape(image)[-1]
    padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
    vertical = tf.tile(tf.reshape(weights, [kernel_size, 1, 1, 1]), [1, 1, channels, 1])
    horizontal = tf.reshape(vertical, [1, kernel_size, channels, 1])
    blurred = tf.nn.depthwise_conv2d(padded, vertical, [1, 1, 1, 1], "VALID")
    blurred = tf.nn.depthwise_conv2d(blurred, horizontal, [1, 1, 1, 1], "VALID")
    return blurred[0]
