"""Constants, builders and NumPy references shared by the export tests."""

import numpy as np

import vader_tf

IMAGE_SIZE = 64
CHECKPOINT_STEP = 7
EMBEDDING_DIM = 16
DECODER_DIM = 32
# resnet18's P4 channels.
P4_DIM = 256
# Channels of the served `features` (contract 3): the decoder's width and P4's, joined.
FEATURE_DIM = DECODER_DIM + P4_DIM


def small_encoder():
    """A small randomly initialised resnet18 encoder (narrow decoder and head)."""
    return vader_tf.build_encoder(
        "resnet18", decoder_channels=DECODER_DIM, head_hidden_dim=32, embedding_dim=EMBEDDING_DIM
    )


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def to_stride_4(level, stride):
    """NumPy bilinear resampling of a `[B, h, w, C]` stride-`stride` map at the centres
    of the stride-4 cells of the same input: cell i is centred at input 4i + 0.5, i.e. at
    grid coordinate 4i / stride of the coarse map (centres s*j + 0.5), clamped."""
    out = np.asarray(level, np.float64)
    for axis in (1, 2):
        cells = out.shape[axis] * stride // 4
        source = np.arange(cells) * 4.0 / stride
        low = np.floor(source).astype(int)
        high = np.minimum(low + 1, out.shape[axis] - 1)
        weight = np.expand_dims(source - low, [a for a in range(4) if a != axis])
        out = (1 - weight) * np.take(out, low, axis) + weight * np.take(out, high, axis)
    return out


def fused_reference(decoder, p4):
    """The served `fused` map (contract 3) re-derived in NumPy from the raw decoder output
    and P4: both L2-normalised on the stride-4 grid, scaled by sqrt(1 / 1.25) and
    sqrt(0.25 / 1.25), concatenated."""
    return np.concatenate(
        [unit(decoder) * np.sqrt(0.8), unit(to_stride_4(p4, 16)) * np.sqrt(0.2)], axis=-1
    )
