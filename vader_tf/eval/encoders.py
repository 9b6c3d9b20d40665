"""Frozen dense feature extractors for evaluation, built from an encoder spec string.

An encoder spec names where the features come from:

- a pretraining run directory or a `.keras` file (loaded with `vader_tf.load_encoder`);
- a SavedModel directory following `vader_tf.serving_contract` (`serving_default`:
  uint8 `images` `[N, H, W, 3]` -> float32 `features` `[N, H/4, W/4, C]`), or an export
  directory holding numbered versions of one (`EXPORT_DIR/<version>/`, newest used);
- `random:<backbone>` (e.g. `random:resnet18`): a randomly initialised encoder, the
  lower-bound baseline; its weights are fixed by the `seed` argument.

The `layer` argument chooses which output of the encoder is tapped (`LAYERS`):
`"features"` (the default: the served representation, what an export's
`serving_default` returns; for encoders of this version the `fused` map of
`vader_tf.models.encoder`), `"embedding"` (the projection head's output, the training
embedding), `"decoder"` (the FPN output) or a backbone level `"P2"`..`"P5"` (strides
4..32). For an encoder of this version `"features"` and `"decoder+P4@0.25"` (below) are
the same map; for a contract-2 export `"features"` is `"decoder"`. Backbone levels are
resized bilinearly to the stride-4 grid with `vader_tf.ops.grid.resize_grid` (as the
decoder does, so cell centres stay put), and every tap is L2-normalised per pixel, so
every tap is a stride-4 map of unit vectors. Taps joined by `+` (e.g. `"decoder+P4"`,
or `"decoder+P4@0.25"` with a weight) are concatenated, each part scaled so that the
whole has unit norm and a dot product of two cells is the weighted mean of the parts'
cosine similarities (`vader_tf.models.layers.join_unit_maps`, which the encoder's served
`fused` map uses too). Tapping the backbone makes frozen evaluation
fair to encoders whose decoder and head were never trained (a MoCo run, a random
encoder). SavedModels are read by output name through the signature
`vader_tf.serving_contract.output_source` names for their contract version: an export of
version 1 (written before the contract was versioned) serves the projection head's
embedding as `features`, and its `embedding` tap reads that output. Every path may be on
any filesystem `tf.io.gfile` knows (e.g. `gs://`).

Every spec becomes a `FeatureExtractor`: a frozen callable mapping float32 images in
[0, 255] of any size to stride-4 features. Images are padded at the bottom and right to
multiples of 32 and the features are cropped back to `ceil(H / 4) x ceil(W / 4)` cells, so
cell `j` keeps its centre at input coordinate `4 * j + 0.5` (see `vader_tf.ops.grid`).
"""

import math

import keras
import numpy as np
import tensorflow as tf

from vader_tf.models.encoder import DECODER, REPRESENTATIONS, build_encoder
from vader_tf.models.layers import join_unit_maps
from vader_tf.ops.grid import resize_grid
from vader_tf.run_dir import load_encoder
from vader_tf.serving_contract import (
    FEATURES_OUTPUT,
    IMAGES_INPUT,
    INPUT_DTYPE,
    INPUT_MULTIPLE,
    OUTPUT_STRIDE,
    PYRAMID_OUTPUTS,
    SERVED_REPRESENTATION,
    contract_version,
    find_saved_model,
    output_source,
    read_metadata,
)

RANDOM_PREFIX = "random:"
FEATURES_LAYER = FEATURES_OUTPUT
LAYERS = PYRAMID_OUTPUTS
LAYER_HELP = (
    "Encoder output to evaluate: features (the served representation: for this version's "
    "encoders and exports the decoder output joined with P4, the same map as "
    "decoder+P4@0.25), embedding (the projection head's training "
    "embedding), decoder, or a backbone level P2..P5; or several joined by '+', each with "
    "an optional weight after '@' (e.g. decoder+P4@0.25: cell similarities are the "
    "weighted mean of the parts')."
)


# Joins the outputs of a combined tap ("decoder+P4"); a part may carry a weight ("P4@0.25").
COMBINE = "+"
WEIGHT = "@"


def _part(text):
    name, _, weight = text.partition(WEIGHT)
    try:
        weight = float(weight) if weight else 1.0
    except ValueError:
        weight = math.nan
    if name not in LAYERS or not (math.isfinite(weight) and weight > 0):
        return None
    return name, weight


def layer_parts(layer):
    """`((output, weight), ...)` of a tap: `((layer, 1.0),)` for one of `LAYERS`, or each
    part of a joined tap `"A+B@w..."` (distinct outputs of `LAYERS`, each with an optional
    positive weight, default 1)."""
    parts = tuple(_part(text) for text in layer.split(COMBINE))
    names = [part[0] for part in parts if part is not None]
    if None in parts or len(set(names)) != len(names):
        raise ValueError(
            f"Unknown layer {layer!r}; expected one of {LAYERS}, or distinct ones joined "
            f"by {COMBINE!r}, each with an optional weight after {WEIGHT!r} (e.g. "
            f"'decoder{COMBINE}P4' or 'decoder{COMBINE}P4{WEIGHT}0.25')."
        )
    return parts


def check_layer(layer):
    layer_parts(layer)


def is_layer(layer):
    """Whether `layer` names a tap (`layer_parts` accepts it)."""
    try:
        layer_parts(layer)
    except ValueError:
        return False
    return True


def tap_to_grid(tapped, images, layer):
    """An encoder output as unit vectors on the stride-4 grid of `images`.

    Args:
        tapped: the `layer` output for `images`, `[B, h, w, C]`.
        images: the `[B, H, W, 3]` input (H, W multiples of 32).
        layer: one of `LAYERS`; the stride-4 ones are not resized.
    """
    tapped = tf.cast(tapped, tf.float32)
    grid = (tf.shape(images)[1] // OUTPUT_STRIDE, tf.shape(images)[2] // OUTPUT_STRIDE)
    if layer not in (FEATURES_LAYER, *REPRESENTATIONS):
        tapped = resize_grid(tapped, grid)
    return tf.math.l2_normalize(tapped, axis=-1)


def load_keras_encoder(spec, seed=0):
    """The trainable `DenseEncoder` named by a run dir, `.keras` file or `random:<backbone>`."""
    if spec.startswith(RANDOM_PREFIX):
        keras.utils.set_random_seed(seed)
        return build_encoder(spec[len(RANDOM_PREFIX) :], output=SERVED_REPRESENTATION)
    return load_encoder(spec, output=SERVED_REPRESENTATION)


def pad_to_multiple(images, multiple=INPUT_MULTIPLE):
    """Pads `[B, H, W, 3]` images (static H, W) at the bottom and right to multiples of
    `multiple`, by mirroring the border; images smaller than `multiple` are zero-padded."""
    height, width = images.shape[1], images.shape[2]
    paddings = [[0, 0], [0, (-height) % multiple], [0, (-width) % multiple], [0, 0]]
    mode = "SYMMETRIC" if min(height, width) >= multiple else "CONSTANT"
    return tf.pad(images, paddings, mode=mode)


class FeatureExtractor:
    """A frozen images -> dense features callable.

    Args:
        forward: function of float32 `[B, H, W, 3]` images in [0, 255], H and W multiples
            of 32, returning `[B, H/4, W/4, D]` features.
        spec: the encoder spec it was built from (recorded in result files).
        layer: the encoder output it taps (one of `LAYERS`).

    Call it on float32 `[B, H, W, 3]` images in [0, 255] of any size; it returns
    `[B, ceil(H/4), ceil(W/4), D]` float32 features as a tensor. `extract` does the same
    for a large numpy array in batches.
    """

    def __init__(self, forward, spec, layer=FEATURES_LAYER):
        self._forward = forward
        self.spec = spec
        self.layer = layer

    def __call__(self, images):
        images = tf.convert_to_tensor(images, tf.float32)
        height, width = images.shape[1], images.shape[2]
        features = self._forward(pad_to_multiple(images))
        return features[
            :, : math.ceil(height / OUTPUT_STRIDE), : math.ceil(width / OUTPUT_STRIDE)
        ]

    def extract(self, images, batch_size=8, dtype=np.float32):
        """Features of a numpy stack of same-size images, computed `batch_size` at a time."""
        batches = [
            self(np.asarray(images[i : i + batch_size], np.float32)).numpy().astype(dtype)
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(batches, axis=0)


def _keras_output(encoder, layer):
    if layer == FEATURES_LAYER:
        return encoder.representations[SERVED_REPRESENTATION]
    if layer in REPRESENTATIONS and layer != DECODER:
        return encoder.representations[layer]
    return encoder.pyramid_outputs[layer]


def _keras_forward(encoder, layer=FEATURES_LAYER):
    encoder.trainable = False
    names, weights = zip(*layer_parts(layer))
    encoder = keras.Model(encoder.input, [_keras_output(encoder, name) for name in names])

    @tf.function(reduce_retracing=True)
    def forward(images):
        tapped = tf.nest.flatten(encoder(images, training=False))
        return join_unit_maps(
            [tap_to_grid(out, images, name) for out, name in zip(tapped, names)], weights
        )

    return forward


def _saved_model_source(loaded, path, layer):
    """The signature name and output name that serve `layer` (one of `LAYERS`)."""
    name, output = output_source(layer, contract_version(read_metadata(path)))
    if name not in loaded.signatures:
        raise ValueError(
            f"SavedModel at {path!r} has no {name!r} signature "
            f"(it has {sorted(loaded.signatures)})."
        )
    signature = loaded.signatures[name]
    if output not in signature.structured_outputs:
        raise ValueError(
            f"SavedModel at {path!r}: signature {name!r} has no output {output!r} "
            f"(it has {sorted(signature.structured_outputs)})."
        )
    return name, output


def _saved_model_forward(path, layer=FEATURES_LAYER):
    loaded = tf.saved_model.load(path)
    names, weights = zip(*layer_parts(layer))
    sources = [_saved_model_source(loaded, path, name) for name in names]

    def forward(images):
        pixels = tf.cast(tf.clip_by_value(tf.round(images), 0.0, 255.0), INPUT_DTYPE)
        # Each signature runs once, however many of the parts it serves.
        served = {
            signature: loaded.signatures[signature](**{IMAGES_INPUT: pixels})
            for signature in dict.fromkeys(signature for signature, _ in sources)
        }
        return join_unit_maps(
            [
                tap_to_grid(served[signature][output], images, name)
                for (signature, output), name in zip(sources, names)
            ],
            weights,
        )

    forward.saved_model = loaded  # Keeps the loaded object alive with the signature.
    return forward


def load_feature_extractor(spec, seed=0, layer=FEATURES_LAYER):
    """Builds a frozen `FeatureExtractor` from an encoder spec (see the module docstring).

    Args:
        spec: run directory, `.keras` file, SavedModel directory or `random:<backbone>`.
        seed: seed of the random initialisation for `random:` specs.
        layer: the tapped output, one of `LAYERS` (see the module docstring).

    Returns:
        A `FeatureExtractor` in inference mode, returning unit-norm stride-4 features.
    """
    check_layer(layer)
    saved_model = find_saved_model(spec)
    if saved_model is not None:
        forward = _saved_model_forward(saved_model, layer)
    else:
        forward = _keras_forward(load_keras_encoder(spec, seed=seed), layer)
    return FeatureExtractor(forward, spec, layer)
