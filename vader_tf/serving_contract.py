"""The serving contract of an exported encoder: the one home of its names and shapes.

`vader_tf.export` writes SavedModels (and TFLite models) that follow it, and
`vader_tf.eval.encoders` reads them through it. An export directory
(`tensorflow_model_server --model_base_path`) holds numbered version directories
`EXPORT_DIR/<version>/`, each a SavedModel with these signatures (contract version 3,
`CONTRACT_VERSION`):

- `serving_default`: `images` uint8 `[N, H, W, 3]` RGB (H, W multiples of
  `INPUT_MULTIPLE`) -> `features` float32 `[N, H/4, W/4, C]`, unit L2 norm per pixel
  (`OUTPUT_STRIDE` = 4): the served representation, `SERVED_REPRESENTATION`: the
  `fused` map of `vader_tf.models.encoder` (the L2-normalised decoder output and the
  backbone's `P4` resized to stride 4 and L2-normalised, concatenated with weights
  `FUSED_PARTS`; C = the decoder's width + P4's channels).
- `pyramid`: the same input -> `features`, `embedding` (the projection head's output,
  the training embedding, `[N, H/4, W/4, D]` unit norm), `decoder` (the FPN output, not
  normalised, stride 4) and the backbone levels `P2`..`P5` (strides 4..32).
- `encoded_images`: `image_bytes` string `[N]` of JPEG/PNG/BMP/GIF files, all of the same
  size with H, W multiples of 32 -> `features`, as for `serving_default`.

Next to the SavedModel, `assets.extra/` holds the TF Serving warmup requests and
`vader_export.json`: the contract version, which representation `features` is and
what it is made of (`features_parts`: each part's output name and weight), the grid of
every output (stride and the input coordinate of cell (0, 0)'s centre), sizes and
verification results.

Older versions, still read (`output_source` reads every output by name): version 2
served the L2-normalised decoder output as `features`; version 1 (exports written before
`contract_version` existed; no such key in `vader_export.json`) served the projection
head's embedding and its `pyramid` had no `embedding` output.
"""

import os

import tensorflow as tf

from vader_tf import storage
from vader_tf.models.encoder import (
    DECODER,
    EMBEDDING,
    FUSED,
    FUSED_PARTS,
    INPUT_MULTIPLE,
    OUTPUT_STRIDES,
)
from vader_tf.ops.grid import FEATURE_STRIDE, declare_grid

CONTRACT_VERSION = 3
# What `features` is in each contract version (a `DenseEncoder` representation).
FEATURES_REPRESENTATION = {1: EMBEDDING, 2: DECODER, 3: FUSED}
SERVED_REPRESENTATION = FEATURES_REPRESENTATION[CONTRACT_VERSION]
# The parts `features` joins (`vader_export.json`'s `features_parts`): `pyramid` outputs
# (each L2-normalised on the stride-4 grid) and their weights.
SERVED_PARTS = dict(FUSED_PARTS)

SERVING_SIGNATURE = "serving_default"
PYRAMID_SIGNATURE = "pyramid"
ENCODED_IMAGES_SIGNATURE = "encoded_images"
SIGNATURES = (SERVING_SIGNATURE, PYRAMID_SIGNATURE, ENCODED_IMAGES_SIGNATURE)

IMAGES_INPUT = "images"
IMAGE_BYTES_INPUT = "image_bytes"
INPUT_DTYPE = tf.uint8
FEATURES_OUTPUT = "features"
EMBEDDING_OUTPUT = EMBEDDING
OUTPUT_DTYPE = tf.float32
PYRAMID_OUTPUTS = (FEATURES_OUTPUT, EMBEDDING_OUTPUT, DECODER, "P2", "P3", "P4", "P5")
# The grid of every output: `{name: {"stride": s, "cell_centre": [y, x]}}`.
OUTPUT_GRID = declare_grid(
    {
        name: OUTPUT_STRIDES[SERVED_REPRESENTATION if name == FEATURES_OUTPUT else name]
        for name in PYRAMID_OUTPUTS
    }
)

OUTPUT_STRIDE = FEATURE_STRIDE
# INPUT_MULTIPLE (imported above) is part of the contract: input height and width
# must be multiples of it.

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
METADATA_FILE = os.path.join("assets.extra", "vader_export.json")


def versions(export_dir):
    """The integer version directories in `export_dir`, sorted ([] if it is missing)."""
    if not tf.io.gfile.isdir(export_dir):
        return []
    names = (name.rstrip("/") for name in tf.io.gfile.listdir(export_dir))
    return sorted(
        int(name)
        for name in names
        if name.isdigit() and tf.io.gfile.isdir(os.path.join(export_dir, name))
    )


def find_saved_model(path):
    """The SavedModel directory `path` names, or None if it names none.

    `path` may be a SavedModel directory or an export directory of numbered versions, in
    which case its newest version holding a SavedModel is returned.
    """
    if not tf.io.gfile.isdir(path):
        return None
    if tf.saved_model.contains_saved_model(path):
        return path
    complete = [
        version
        for version in versions(path)
        if tf.saved_model.contains_saved_model(os.path.join(path, str(version)))
    ]
    return os.path.join(path, str(complete[-1])) if complete else None


def read_metadata(saved_model_dir):
    """The export's `vader_export.json` as a dict ({} if it has none)."""
    return storage.read_json_if_exists(os.path.join(saved_model_dir, METADATA_FILE)) or {}


def contract_version(metadata):
    """The contract version an export's metadata declares (1 when it declares none)."""
    version = metadata.get("contract_version", 1)
    if version not in FEATURES_REPRESENTATION:
        raise ValueError(
            f"Unknown serving contract version {version!r} (this vader_tf reads "
            f"{sorted(FEATURES_REPRESENTATION)}); update vader_tf."
        )
    return version


def output_source(name, version=CONTRACT_VERSION):
    """`(signature, output)` that holds the output `name` of an export of `version`.

    `name` is one of `PYRAMID_OUTPUTS`: `features` comes from `serving_default`, the
    others from `pyramid`; version 1 has no `embedding` output, its `features` is it.
    """
    if name not in PYRAMID_OUTPUTS:
        raise ValueError(f"Unknown output {name!r}; expected one of {PYRAMID_OUTPUTS}.")
    if name == FEATURES_OUTPUT:
        return SERVING_SIGNATURE, FEATURES_OUTPUT
    if name == EMBEDDING_OUTPUT and FEATURES_REPRESENTATION[version] == EMBEDDING:
        return PYRAMID_SIGNATURE, FEATURES_OUTPUT
    return PYRAMID_SIGNATURE, name
