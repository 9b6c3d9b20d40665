"""Probes of where a network puts its feature cells, measured on the network itself.

The oracle here is NumPy and the network's own response; nothing in it uses the grid
convention of `vader_tf.ops.grid` (the tests compare the two).

- `make_symmetric`: every convolution kernel made left-right symmetric (optionally also
  non-negative and averaging, with zero biases and identity batch norm), so a cell's
  support is symmetric about the cell's centre and flips commute with the network up to
  a shift.
- `impulse_centres`: the centre of a cell's support along x, in continuous input
  coordinates (pixel `k` covers `[k, k + 1)`), from the responses to column impulses.
- `flip_shift`: the best-fit shift, in cells, between `f(flip(x))` and `flip(f(x))`.
"""

import keras
import numpy as np

from vader_tf.models.layers import IMAGENET_MEAN, IMAGENET_STD

LEVEL_STRIDES = {"P2": 4, "P3": 8, "P4": 16, "P5": 32, "decoder": 4}


def _convolutions(model):
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.Conv2D)
    ]


def _batch_norms(model):
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def make_symmetric(encoder, positive=False, seed=0):
    """Makes every conv kernel of `encoder` left-right symmetric, in place.

    Biases and the batch norms' shifts (beta, moving mean) become zero, so an all-zero
    normalised input gives all-zero activations everywhere, the same as the convolutions'
    zero padding: content placed away from the borders sees an unbounded zero plane. With
    `positive=True` kernels are also non-negative and sum to 1 per output channel and
    batch norms are the identity, so an impulse spreads exactly over the support of the
    cells it reaches; otherwise kernels keep their random signs and batch norms get random
    scales (inference mode).
    """
    rng = np.random.default_rng(seed)
    for layer in _convolutions(encoder):
        kernel = layer.kernel.numpy()
        if positive:
            kernel = np.abs(kernel)
        kernel = 0.5 * (kernel + kernel[:, ::-1])
        if positive:
            kernel = kernel / kernel.sum(axis=(0, 1, 2), keepdims=True)
        layer.kernel.assign(kernel)
        if layer.use_bias:
            layer.bias.assign(np.zeros(layer.bias.shape, "float32"))
    for layer in _batch_norms(encoder):
        channels = layer.gamma.shape[0]
        zeros, ones = np.zeros(channels), np.ones(channels)
        gamma, variance = (ones, ones) if positive else rng.uniform(0.5, 1.5, (2, channels))
        for variable, value in zip(
            (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance),
            (gamma, zeros, zeros, variance),
        ):
            variable.assign(np.asarray(value, "float32"))
    return encoder


def zero_laterals_except(encoder, level):
    """Keeps only `level`'s lateral in the decoder, so the decoder output is the pathway
    of that one backbone level."""
    for name, lateral in encoder.laterals.items():
        if name != level:
            lateral.kernel.assign(np.zeros(lateral.kernel.shape, "float32"))
            lateral.bias.assign(np.zeros(lateral.bias.shape, "float32"))


def pixels_from_normalised(normalised):
    """Raw [0, 255]-range pixels that the encoder's input normalisation maps to
    `normalised` (so a zero normalised input is exactly the ImageNet mean)."""
    mean = np.asarray(IMAGENET_MEAN, "float32")
    std = np.asarray(IMAGENET_STD, "float32")
    return (mean + std * normalised).astype("float32")


def impulse_centres(apply, strides, width, period=32, height=32):
    """Centre along x of the middle cell's support of each output, in continuous input
    coordinates (pixel `k` covers `[k, k + 1)`).

    `apply` maps normalised-space images `[B, height, width, 3]` (zero = background) to
    a dict of `[B, h, width / stride, C]` maps, one per name in `strides` (name ->
    stride), each non-negative, zero for a zero input and translation-equivariant by
    `period` input pixels (a symmetric positive network whose coarsest level has stride
    `period`). One impulse column per phase `k0 + p` (`p < period`) gives, by
    equivariance, the response of one cell to every column `k0 + p + period * m`; the
    centre is its centroid. `width` must exceed the spread of the impulse responses.

    Returns:
        `{name: (cell, centre)}`.
    """
    first = period * (width // period // 2)
    impulses = np.zeros((period, height, width, 3), "float32")
    for phase in range(period):
        impulses[phase, :, first + phase, :] = 1.0
    outputs = apply(impulses)
    centres = {}
    for name, stride in strides.items():
        responses = np.asarray(outputs[name], np.float64).sum(axis=(1, 3))  # [period, cells]
        cells = responses.shape[1]
        step = period // stride  # Cells moved when the impulse moves `period` pixels.
        cell = step * (cells // step // 2)
        positions, weights = [], []
        for phase in range(period):
            for m in range((cell - cells) // step + 1, cell // step + 1):
                positions.append(first + phase + period * m + 0.5)
                weights.append(responses[phase, cell - step * m])
        weights = np.asarray(weights)
        centres[name] = (cell, float(np.dot(positions, weights) / weights.sum()))
    return centres


def flip_shift(apply, images, border=2, search=(-10.0, 2.0)):
    """Best-fit shift `d` (cells, to 0.002) with `f(flip(x))[j] ~ flip(f(x))[j + d]`.

    `flip(f(x))` is interpolated linearly along x; columns within `border` cells of
    either edge are left out of the fit. Searched coarse (0.05) then fine (0.002).
    """
    flipped_first = np.asarray(apply(images[:, :, ::-1].copy()), np.float64)
    flipped_after = np.asarray(apply(images), np.float64)[:, :, ::-1]
    # The relation holds for any linear map of the channels: fit on 8 random ones.
    projection = np.random.default_rng(0).normal(size=(flipped_first.shape[-1], 8))
    flipped_first, flipped_after = flipped_first @ projection, flipped_after @ projection
    cells = flipped_first.shape[2]
    columns = np.arange(border, cells - border)

    def error(shift):
        source = columns + shift
        keep = (source >= 0) & (source <= cells - 1)
        if keep.sum() < max(2, (cells - 2 * border) // 2):
            return np.inf
        low = np.floor(source[keep]).astype(int)
        high = np.minimum(low + 1, cells - 1)
        fraction = (source[keep] - low)[None, None, :, None]
        moved = (1 - fraction) * flipped_after[:, :, low] + fraction * flipped_after[:, :, high]
        return np.mean((flipped_first[:, :, columns[keep]] - moved) ** 2)

    coarse = np.arange(search[0], search[1] + 1e-9, 0.05)
    best = coarse[np.argmin([error(shift) for shift in coarse])]
    fine = np.arange(best - 0.05, best + 0.05 + 1e-9, 0.002)
    return float(fine[np.argmin([error(shift) for shift in fine])])


def mirror_images(images):
    """`images` reflected about the continuous position `(W + 1) / 2`: pixel `k` shows
    pixel `W - k` (pixel 0 shows column W, i.e. the background: `images` must be zero
    near their borders). This is a flip moved right by one pixel."""
    return np.roll(images[:, :, ::-1], 1, axis=2)


def mirror_mismatch(apply, images, offset, border=12):
    """Relative mismatch between `f(mirror_images(x))[j]` and `flip(f(x))[j + offset]`.

    With cells at `s * j + 0.5`, the axis `(W + 1) / 2` maps the cell centres of every
    stride dividing `W` onto each other, so a symmetric network gives equality with
    `offset = -1`, exactly up to float error, wherever the borders' padding is not felt
    (`images` zero over more than the receptive field's reach from both borders).

    Returns:
        max |difference| / max |output| over the columns `border` cells inside the edges.
    """
    first = np.asarray(apply(mirror_images(images)), np.float64)
    second = np.asarray(apply(images), np.float64)[:, :, ::-1]
    cells = first.shape[2]
    columns = np.arange(max(border, -offset), min(cells - border, cells - offset))
    difference = np.abs(first[:, :, columns] - second[:, :, columns + offset]).max()
    return float(difference / np.abs(second).max())


def windowed_images(batch, height, width, margin, sigma=4.0, seed=0):
    """Random normalised-space images: Gaussian noise blurred to about `sigma` pixels,
    faded out (cosine ramps of `margin` pixels) to exactly zero within `margin` pixels of
    the left and right borders, so the borders' padding barely matters."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(batch, height, width, 3))
    radius = int(3 * sigma)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    for axis in (1, 2):
        noise = np.apply_along_axis(lambda v: np.convolve(v, taps, mode="same"), axis, noise)
    x = np.arange(width) + 0.5
    distance = np.minimum(x, width - x)  # Symmetric under the flip.
    ramp = np.clip((distance - margin) / margin, 0.0, 1.0)
    window = 0.5 - 0.5 * np.cos(np.pi * ramp)
    return (noise / noise.std() * window[None, None, :, None]).astype("float32")
