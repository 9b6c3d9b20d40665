"""The serving contract of an exported encoder: the one home of its names and shapes.

`vader_tf.export` writes SavedModels (and TFLite models) that follow it, and
`vader_tf.eval.encoders` reads them through it. An export directory
(`tensorflow_model_server --model_base_path`) holds numbered version directories
`EXPORT_DIR/<version>/`, each a SavedModel with these signatures:

- `serving_default`: `images` uint8 `[N, H, W, 3]` RGB (H, W multiples of
  `INPUT_MULTIPLE`) -> `features` float32 `[N, H/4, W/4, D]`, unit L2 norm per pixel
  (`OUTPUT_STRIDE` = 4).
- `pyramid`: the same input -> `features`, the backbone levels `P2`..`P5` (strides
  4..32) and `decoder` (the FPN output the projection head reads, stride 4).
- `encoded_images`: `image_bytes` string `[N]` of JPEG/PNG/BMP/GIF files, all of the same
  size with H, W multiples of 32 -> `features`, as for `serving_default`.

Next to the SavedModel, `assets.extra/` holds the TF Serving warmup requests and
`vader_export.json` (embedding size, stride, verification results).
"""

import os

import tensorflow as tf

from vader_tf.models.encoder import INPUT_MULTIPLE
from vader_tf.ops.grid import FEATURE_STRIDE

SERVING_SIGNATURE = "serving_default"
PYRAMID_SIGNATURE = "pyramid"
ENCODED_IMAGES_SIGNATURE = "encoded_images"
SIGNATURES = (SERVING_SIGNATURE, PYRAMID_SIGNATURE, ENCODED_IMAGES_SIGNATURE)

IMAGES_INPUT = "images"
IMAGE_BYTES_INPUT = "image_bytes"
INPUT_DTYPE = tf.uint8
FEATURES_OUTPUT = "features"
OUTPUT_DTYPE = tf.float32
PYRAMID_OUTPUTS = (FEATURES_OUTPUT, "decoder", "P2", "P3", "P4", "P5")

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
