"""Export of a run's trained backbone as a keras-hub preset.

A keras-hub preset is a directory that `keras_hub.models.Backbone.from_preset(PATH)`
loads: `config.json` (the backbone class and its constructor arguments),
`model.weights.h5` and `metadata.json`. `export_keras_hub_preset` writes the query
encoder's backbone of a pretraining run as one, with keras-hub's own
`Backbone.save_to_preset`, so that it loads in a process that never imports vader_tf
and plugs into keras-hub's tasks (e.g. `DeepLabV3ImageSegmenter`, whose
`DeepLabV3Backbone` reads the pyramid levels "P2".."P5"). Beside it in the same directory:

- `image_converter.json`: the keras-hub image converter of the backbone's family
  (e.g. `ResNetImageConverter`) set to the encoder's input standardisation (ImageNet
  mean and std for pixels in [0, 255]), when keras-hub has a converter for the family:
  the backbone itself takes standardised images, as keras-hub backbones do;
- `vader_decoder_head.keras`: the encoder's FPN decoder and projection head as a Keras
  model mapping the dict of levels "P2".."P5" to `{"decoder", "features", "embedding"}`
  (the FPN output, the served features and the head's training embedding; loading it
  needs `import vader_tf`: its resizing and normalisation layers are ours);
- `metadata.json` gets a `"vader_tf"` entry naming the run, checkpoint, step, method,
  our package version and the verification result.

The preset names only keras and keras-hub classes: the backbone is rebuilt from its
keras-hub config in float32 (whatever precision the run trained in; our fused batch norm
class, `vader_tf.models.layers.BatchNormalization`, never reaches the config), and a
backbone whose config names any other class is refused before anything is written.

Everything is checked before the preset is published: the run has a checkpoint, the
target is missing or empty, the backbone is expressible; then the preset is written to a
local staging directory (keras-hub writes local files only), loaded back with
`Backbone.from_preset` and compared with the run's backbone on sample photos, and only
then moved (local) or copied file by file with `config.json` last (any other
`tf.io.gfile` filesystem, `gs://` or `ram://`) to the target. A failure leaves nothing.
"""

import os

import keras
import keras_hub
import numpy as np
import tensorflow as tf
from absl import logging

import vader_tf
from vader_tf import storage
from vader_tf.export import sample_images as sample_images_lib
from vader_tf.models import backbone as backbone_lib
from vader_tf.models.encoder import EMBEDDING
from vader_tf.models.layers import IMAGENET_MEAN, IMAGENET_STD
from vader_tf.run_dir import RunDir, load_encoder
from vader_tf.serving_contract import SERVED_REPRESENTATION

CONFIG_FILE = "config.json"  # keras-hub's backbone config; published last.
METADATA_FILE = "metadata.json"  # keras-hub's metadata; ours is its "vader_tf" entry.
IMAGE_CONVERTER_FILE = "image_converter.json"
HEAD_FILE = "vader_decoder_head.keras"
METADATA_KEY = "vader_tf"
# Largest |difference| accepted between the preset's and the run's pyramid levels.
VERIFY_MAX_ABS_ERROR = 1e-4

_KERAS_MODULES = ("keras.", "keras_hub.")


class PresetExportError(ValueError):
    """A run, target or backbone that cannot be exported as a keras-hub preset."""


def _foreign_classes(config, found=None):
    """The (class name, module) pairs in a serialized config that are not keras or
    keras-hub classes."""
    found = set() if found is None else found
    if isinstance(config, dict):
        module = config.get("module")
        if "class_name" in config and module is not None:
            if not (module + ".").startswith(_KERAS_MODULES):
                found.add((config["class_name"], module))
        for value in config.values():
            _foreign_classes(value, found)
    elif isinstance(config, (list, tuple)):
        for value in config:
            _foreign_classes(value, found)
    return found


def keras_hub_config(backbone, source="backbone"):
    """The serialized config of `backbone` as keras-hub rebuilds it, in float32.

    Raises:
        PresetExportError: the backbone is not a keras-hub class, or its config names
            classes from outside keras and keras-hub.
    """
    config = keras.saving.serialize_keras_object(backbone)
    foreign = _foreign_classes(config)
    if not isinstance(backbone, keras_hub.models.Backbone) or foreign:
        names = ", ".join(f"{name} ({module})" for name, module in sorted(foreign))
        raise PresetExportError(
            f"{source}: {type(backbone).__name__} cannot be expressed as a keras-hub preset; "
            f"its config names classes outside keras and keras-hub: {names or type(backbone)}."
        )
    config["config"]["dtype"] = "float32"
    return config


def standalone_backbone(backbone, source="backbone"):
    """A float32 copy of `backbone` rebuilt from its keras-hub config, same weights."""
    copy = keras.saving.deserialize_keras_object(keras_hub_config(backbone, source))
    copy.set_weights(backbone.get_weights())
    return copy


def image_converter(backbone):
    """The keras-hub image converter of `backbone`'s family set to the encoder's input
    standardisation (pixels in [0, 255]), or None if keras-hub has none for it."""
    for cls in _subclasses(keras_hub.layers.ImageConverter):
        if getattr(cls, "backbone_cls", None) is type(backbone):
            return cls(
                scale=[1.0 / s for s in IMAGENET_STD],
                offset=[-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)],
            )
    return None


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def decoder_head_model(encoder):
    """The encoder's decoder and head: `{"P2".."P5"}` -> `{"decoder", "features",
    "embedding"}`: the FPN output, the served features (`SERVED_REPRESENTATION`, the
    normalised decoder output joined with P4, as `load_encoder` and the SavedModel serve
    them) and the projection head's training embedding."""
    levels = {
        level: keras.Input(
            shape=(None, None, encoder.pyramid_outputs[level].shape[-1]), name=level
        )
        for level in backbone_lib.PYRAMID_LEVELS
    }
    x = encoder.laterals["P5"](levels["P5"])
    for level in reversed(backbone_lib.PYRAMID_LEVELS[:-1]):
        lateral = encoder.laterals[level](levels[level])
        x = encoder.get_layer(f"decoder_merge_{level}")([lateral, encoder.upsample[level](x, lateral)])
    decoder = encoder.get_layer("decoder_output")(encoder.smooth_bn(encoder.smooth_conv(x)))
    representations = encoder.represent(levels, decoder)
    return keras.Model(
        levels,
        {
            "decoder": decoder,
            "features": representations[SERVED_REPRESENTATION],
            EMBEDDING: representations[EMBEDDING],
        },
        name="vader_decoder_head",
    )


def check_target(preset_dir):
    """Raises `PresetExportError` unless `preset_dir` is missing or an empty directory."""
    if not tf.io.gfile.exists(preset_dir):
        return
    if not tf.io.gfile.isdir(preset_dir) or storage.listdir(preset_dir):
        raise PresetExportError(
            f"--preset_dir {preset_dir!r} exists and is not empty; give a new or empty "
            "directory (presets are never overwritten)."
        )


def _max_abs_errors(encoder, preset_backbone, images):
    standardised = encoder.normalization(images.astype("float32"))
    want = encoder.pyramid(standardised, training=False)
    got = backbone_lib.pyramid_model(preset_backbone)(standardised, training=False)
    return {
        level: float(np.max(np.abs(np.asarray(got[level]) - np.asarray(want[level]))))
        for level in backbone_lib.PYRAMID_LEVELS
    }


def _publish(staging, preset_dir):
    if storage.is_local(preset_dir) and tf.io.gfile.isdir(preset_dir):
        tf.io.gfile.rmtree(preset_dir)  # Empty (checked): the rename needs it gone.
    storage.publish_directory(staging, preset_dir, last=CONFIG_FILE)


def export_keras_hub_preset(
    model_dir, preset_dir, checkpoint=None, sample_size=64, num_sample_images=2
):
    """Writes the query backbone of a pretraining run as a keras-hub preset.

    Args:
        model_dir: the pretraining run directory.
        preset_dir: the preset directory to write (missing or empty; any `tf.io.gfile`
            path).
        checkpoint: optional checkpoint prefix in `model_dir` (default: the latest).
        sample_size: side of the sample photos the preset is verified on (multiple of 32).
        num_sample_images: number of sample photos.

    Returns:
        The metadata written under `"vader_tf"` in `metadata.json`.

    Raises:
        PresetExportError: no checkpoint, a non-empty target, or a backbone keras-hub
            cannot express; nothing is written.
        FileNotFoundError: `model_dir` is not a run directory.
    """
    model_dir = os.fspath(model_dir)
    preset_dir = os.fspath(preset_dir).rstrip("/")
    run = RunDir(model_dir)
    if not tf.io.gfile.isdir(model_dir):
        raise FileNotFoundError(f"--model_dir {model_dir!r}: no such run directory.")
    checkpoint = checkpoint or run.latest_checkpoint()
    if checkpoint is None:
        raise PresetExportError(
            f"--model_dir {model_dir!r} holds no checkpoint in {run.checkpoint_dir!r}; "
            "train first (or give a run that has one)."
        )
    check_target(preset_dir)
    encoder = load_encoder(model_dir, checkpoint=checkpoint)
    backbone = standalone_backbone(encoder.backbone, source=f"--model_dir {model_dir!r}")
    converter = image_converter(backbone)
    run_config = run.read_run_config() or {}
    images, image_source = sample_images_lib.sample_images(num_sample_images, sample_size)

    staging = storage.staging_directory(preset_dir, f".tmp-preset-{os.getpid()}")
    try:
        backbone.save_to_preset(staging)
        if converter is not None:
            converter.save_to_preset(staging)
        decoder_head_model(encoder).save(os.path.join(staging, HEAD_FILE))
        errors = _max_abs_errors(
            encoder, keras_hub.models.Backbone.from_preset(staging), images
        )
        if max(errors.values()) > VERIFY_MAX_ABS_ERROR:
            raise RuntimeError(
                f"The preset's pyramid differs from the run's backbone by {errors} "
                f"(limit {VERIFY_MAX_ABS_ERROR}); nothing written."
            )
        metadata_path = os.path.join(staging, METADATA_FILE)
        metadata = storage.read_json(metadata_path)
        ours = {
            "package_version": vader_tf.__version__,
            "model_dir": storage.absolute(model_dir),
            "checkpoint": storage.absolute(checkpoint),
            "step": int(checkpoint.rsplit("-", 1)[-1]),
            "method": run_config.get("method"),
            "backbone": backbone_lib.backbone_name(backbone) or type(backbone).__name__,
            "input": "ImageNet-standardised RGB (see image_converter.json for pixels in [0, 255])",
            "pyramid_levels": list(backbone_lib.PYRAMID_LEVELS),
            "decoder_head": HEAD_FILE,
            "verification": {"max_abs_error": errors, "images": image_source},
        }
        storage.write_json_atomic(metadata_path, {**metadata, METADATA_KEY: ours})
        check_target(preset_dir)  # Again: another process may have written there.
        _publish(staging, preset_dir)
    finally:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
    logging.info("Wrote keras-hub preset %s from %s", preset_dir, checkpoint)
    return ours

