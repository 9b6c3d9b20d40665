"""Export of the dense encoder as a versioned SavedModel for TensorFlow Serving.

The export holds only the query encoder's weights and plain TensorFlow functions, so it
loads with `tf.saved_model.load` without vader_tf or Keras. Its signatures, input and
output names are those of `vader_tf.serving_contract`.

An export is written to a temporary directory, checked against the Keras model on
sample images, and only then moved to `EXPORT_DIR/<version>/`, so a failed export never
leaves a version directory behind. `EXPORT_DIR` may be on any filesystem `tf.io.gfile`
knows (e.g. `gs://`). On the local filesystem the temporary directory
(`.tmp-<version>-<pid>`) is next to the target and renamed to it; a killed export leaves
it behind, and the next export to the same directory removes it once that process is no
longer running. Elsewhere it is a local temporary directory, copied to the target with
`saved_model.pb` last (see `vader_tf.storage` for what readers may see meanwhile).
"""

import os
import re

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from vader_tf import cli, storage
from vader_tf.export import sample_images as sample_images_lib
from vader_tf.models.encoder import EMBEDDING
from vader_tf.run_dir import RunDir
from vader_tf.serving_contract import (
    CONTRACT_VERSION,
    EMBEDDING_OUTPUT,
    ENCODED_IMAGES_SIGNATURE,
    FEATURES_OUTPUT,
    IMAGE_BYTES_INPUT,
    IMAGES_INPUT,
    INPUT_DTYPE,
    INPUT_MULTIPLE,
    METADATA_FILE,
    OUTPUT_DTYPE,
    OUTPUT_GRID,
    OUTPUT_STRIDE,
    PYRAMID_SIGNATURE,
    SERVED_PARTS,
    SERVED_REPRESENTATION,
    SERVING_SIGNATURE,
    WARMUP_FILE,
    find_saved_model,
    versions,
)

TMP_PREFIX = ".tmp-"
_TMP_NAME = re.compile(re.escape(TMP_PREFIX) + r"(\d+)-(\d+)$")

# Verification: the export must reproduce the Keras model to float32 round-off.
VERIFY_MAX_ABS_ERROR = 1e-4


class ExportVerificationError(RuntimeError):
    """The exported model's outputs do not match the Keras model's."""


def _check_images(images):
    """Fails inside the graph unless `images` is a non-empty batch `[N, H, W, 3]` with
    H, W positive multiples of 32.

    A signature's declared input shape is not enforced when it is called (by TF Serving
    or `loaded.signatures[...]`), so an unbatched image, RGBA pixels or an empty batch
    get one of these messages instead of a shape error deep inside the network. The
    checks run concurrently, so each one after the first passes when the shape itself
    is wrong.
    """
    shape = tf.shape(images)
    # Padded so that indexing works whatever the rank; the shape check rejects the rest.
    batch, height, width, channels = tf.unstack(tf.concat([shape, [0, 0, 0, 0]], 0)[:4], num=4)
    shape_ok = tf.logical_and(tf.equal(tf.size(shape), 4), tf.equal(channels, 3))
    size_ok = tf.logical_and(
        tf.logical_and(height > 0, width > 0),
        tf.logical_and(
            tf.equal(height % INPUT_MULTIPLE, 0), tf.equal(width % INPUT_MULTIPLE, 0)
        ),
    )
    shape_wrong = tf.logical_not(shape_ok)
    checks = [
        tf.debugging.Assert(
            shape_ok,
            ["images: expected a batch of RGB images [N, H, W, 3]; got shape", shape],
            summarize=8,
            name="check_shape",
        ),
        tf.debugging.Assert(
            tf.logical_or(shape_wrong, batch > 0),
            ["images: the batch is empty"],
            name="check_batch",
        ),
        tf.debugging.Assert(
            tf.logical_or(shape_wrong, size_ok),
            [
                f"images: height and width must be positive multiples of {INPUT_MULTIPLE}; "
                "got height, width =",
                height,
                width,
            ],
            name="check_image_size",
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.ensure_shape(images, [None, None, None, 3])


def _decode_same_size_images(image_bytes):
    """Decodes a batch of encoded images, which must all have the same size."""

    def decode(contents):
        image = tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False)
        return tf.ensure_shape(image, [None, None, 3])

    not_empty = tf.debugging.Assert(
        tf.size(image_bytes) > 0, ["image_bytes: the batch is empty"], name="check_not_empty"
    )
    with tf.control_dependencies([not_empty]):
        reference_shape = tf.shape(decode(image_bytes[0]))

    def decode_checked(contents):
        image = decode(contents)
        check = tf.debugging.Assert(
            tf.reduce_all(tf.equal(tf.shape(image), reference_shape)),
            [
                "image_bytes: all images in a request must have the same size; got",
                tf.shape(image),
                "and",
                reference_shape,
            ],
            name="check_same_size",
        )
        with tf.control_dependencies([check]):
            return tf.identity(image)

    return tf.map_fn(
        decode_checked,
        image_bytes,
        fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
    )


class EncoderServingModule(tf.Module):
    """The `tf.Module` that is saved: the encoder's variables and serving functions.

    Only the variables are tracked (not the Keras objects), so the SavedModel holds
    plain TensorFlow functions. The encoder always runs in inference mode. `features` is
    the encoder's `SERVED_REPRESENTATION` and `embedding` its projection head's output,
    whichever of them `encoder` itself returns.
    """

    def __init__(self, encoder):
        super().__init__(name="vader_encoder")
        self._features_model = keras.Model(
            encoder.input, encoder.representations[SERVED_REPRESENTATION], name="features"
        )
        self._pyramid_model = pyramid_model(encoder)
        # Tracked so that `tf.saved_model.save` serialises the weights.
        self.encoder_variables = list(encoder.variables)

        image_spec = tf.TensorSpec([None, None, None, 3], INPUT_DTYPE, name=IMAGES_INPUT)
        bytes_spec = tf.TensorSpec([None], tf.string, name=IMAGE_BYTES_INPUT)
        self.serve = tf.function(self._serve, input_signature=[image_spec])
        self.serve_pyramid = tf.function(self._serve_pyramid, input_signature=[image_spec])
        self.serve_encoded_images = tf.function(
            self._serve_encoded_images, input_signature=[bytes_spec]
        )

    def _features(self, images):
        images = tf.cast(_check_images(images), tf.float32)
        return tf.cast(self._features_model(images, training=False), OUTPUT_DTYPE)

    def _serve(self, images):
        return {FEATURES_OUTPUT: self._features(images)}

    def _serve_pyramid(self, images):
        images = tf.cast(_check_images(images), tf.float32)
        outputs = self._pyramid_model(images, training=False)
        return {name: tf.cast(value, OUTPUT_DTYPE) for name, value in outputs.items()}

    def _serve_encoded_images(self, image_bytes):
        return {FEATURES_OUTPUT: self._features(_decode_same_size_images(image_bytes))}

    def signatures(self):
        return {
            SERVING_SIGNATURE: self.serve.get_concrete_function(),
            PYRAMID_SIGNATURE: self.serve_pyramid.get_concrete_function(),
            ENCODED_IMAGES_SIGNATURE: self.serve_encoded_images.get_concrete_function(),
        }


def pyramid_model(encoder):
    """The Keras model of the `pyramid` signature's outputs, by their contract names."""
    return keras.Model(
        encoder.input,
        {
            **encoder.pyramid_outputs,
            FEATURES_OUTPUT: encoder.representations[SERVED_REPRESENTATION],
            EMBEDDING_OUTPUT: encoder.representations[EMBEDDING],
        },
        name="encoder_with_pyramid",
    )


def export_metadata(encoder):
    """What `vader_export.json` declares about the contract and the outputs' grids."""
    features = encoder.representations[SERVED_REPRESENTATION]
    return {
        "contract_version": CONTRACT_VERSION,
        "features": SERVED_REPRESENTATION,
        # `features` = each part (a `pyramid` output, L2-normalised on the stride-4 grid)
        # times sqrt(weight / sum of weights), concatenated in this order.
        "features_parts": [[name, weight] for name, weight in SERVED_PARTS.items()],
        "feature_dim": int(features.shape[-1]),
        "embedding_dim": int(encoder.representations[EMBEDDING].shape[-1]),
        "output_stride": OUTPUT_STRIDE,
        "input_multiple": INPUT_MULTIPLE,
        "grid": {
            "convention": "input pixel k covers [k, k + 1); cell (i, j) of an output "
            "of stride s is centred at cell_centre + s * (i, j) (y, x), input pixels",
            "outputs": OUTPUT_GRID,
        },
    }


def resolve_version_dir(path):
    """The SavedModel directory `path` means: `path` itself if it holds a SavedModel, else
    the newest version directory of the model base directory `path` (logged).

    Raises:
        FileNotFoundError: `path` is neither, e.g. a pretraining run directory (the
            message says how to export it) or a missing directory.
    """
    found = find_saved_model(path)
    if found is not None:
        if found != path:
            logging.info("%s is a model base directory; using its newest version, %s.", path, found)
        return found
    if RunDir(path).looks_like_run():
        export = cli.command("vader-export", model_dir=path, export_dir=cli.export_dir_for(path))
        raise FileNotFoundError(
            f"{path!r} is a pretraining run directory, not a SavedModel; export it first: {export}"
        )
    raise FileNotFoundError(
        f"No SavedModel at {path!r}: expected a version directory written by "
        "vader-export (EXPORT_DIR/<version>) or its EXPORT_DIR."
    )


def remove_stale_temporaries(export_dir):
    """Deletes the temporary directories of killed exports in `export_dir`, logging each.

    A `.tmp-<version>-<pid>` directory is stale when no process `pid` runs on this
    machine; one whose process still runs (a concurrent export) is left alone.
    """
    if not tf.io.gfile.isdir(export_dir):
        return
    for name in tf.io.gfile.listdir(export_dir):
        match = _TMP_NAME.match(name.rstrip("/"))
        if match and not storage.process_is_running(int(match.group(2))):
            path = os.path.join(export_dir, name.rstrip("/"))
            logging.warning("Removing %s, left by a killed export.", path)
            tf.io.gfile.rmtree(path)


def next_version(export_dir):
    """1 for an empty `export_dir`, else one more than its largest version."""
    existing = versions(export_dir)
    return existing[-1] + 1 if existing else 1


def _length_delimited(field_number, payload):
    """One protobuf wire-format field of type 2 (bytes, string or sub-message)."""

    def varint(value):
        out = bytearray()
        while True:
            low, value = value & 0x7F, value >> 7
            out.append(low | (0x80 if value else 0))
            if not value:
                return bytes(out)

    return varint(field_number << 3 | 2) + varint(len(payload)) + payload


def predict_warmup_record(images, model_name="vader"):
    """A serialized `tensorflow.serving.PredictionLog` holding one `serving_default`
    PredictRequest with `images` as its `images` input.

    Encoded directly in the protobuf wire format, so that exporting needs neither
    tensorflow-serving-api nor its generated classes; the `TensorProto` inside comes from
    TensorFlow. Field numbers are those of tensorflow_serving/apis/{prediction_log,
    predict,model}.proto: PredictionLog.predict_log = 6, PredictLog.request = 1,
    PredictRequest.model_spec = 1 and .inputs = 2 (a map: entries with key = 1,
    value = 2), ModelSpec.name = 1 and .signature_name = 3.
    """
    tensor = tf.make_tensor_proto(np.asarray(images, np.uint8)).SerializeToString()
    model_spec = _length_delimited(1, model_name.encode()) + _length_delimited(
        3, SERVING_SIGNATURE.encode()
    )
    inputs_entry = _length_delimited(1, IMAGES_INPUT.encode()) + _length_delimited(2, tensor)
    request = _length_delimited(1, model_spec) + _length_delimited(2, inputs_entry)
    predict_log = _length_delimited(1, request)
    return _length_delimited(6, predict_log)


def write_warmup_requests(path, images, model_name="vader"):
    """Writes TF Serving warmup records: one `serving_default` PredictRequest.

    Args:
        path: output file (`<version>/assets.extra/tf_serving_warmup_requests`).
        images: uint8 `[N, H, W, 3]` batch sent as the request's `images` input.
        model_name: `model_spec.name` of the request (TF Serving ignores it for warmup).
    """
    storage.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(predict_warmup_record(images, model_name))


def _encode_png(images):
    return tf.stack([tf.io.encode_png(image) for image in tf.unstack(images)])


def verify_export(saved_model_dir, encoder, images, max_abs_error=VERIFY_MAX_ABS_ERROR):
    """Checks every output of every signature of an export against the Keras encoder.

    Args:
        saved_model_dir: the SavedModel to check.
        encoder: the `DenseEncoder` it was exported from.
        images: uint8 `[N, H, W, 3]` sample images, H and W multiples of 32.
        max_abs_error: largest allowed absolute difference of any output value.

    Returns:
        A dict of measured differences (for the export metadata).

    Raises:
        ExportVerificationError: if an output differs by more than `max_abs_error`, or
            `features` or `embedding` are not unit-norm.
    """
    loaded = tf.saved_model.load(saved_model_dir)
    expected = {
        name: keras.ops.convert_to_numpy(value).astype(np.float32)
        for name, value in pyramid_model(encoder)(
            tf.cast(images, tf.float32), training=False
        ).items()
    }
    pixels = {IMAGES_INPUT: tf.constant(images)}
    outputs = {
        SERVING_SIGNATURE: loaded.signatures[SERVING_SIGNATURE](**pixels),
        PYRAMID_SIGNATURE: loaded.signatures[PYRAMID_SIGNATURE](**pixels),
        ENCODED_IMAGES_SIGNATURE: loaded.signatures[ENCODED_IMAGES_SIGNATURE](
            **{IMAGE_BYTES_INPUT: _encode_png(tf.constant(images))}
        ),
    }
    report = {}
    for signature, values in outputs.items():
        if sorted(values) != sorted(outputs_of(signature, expected)):
            raise ExportVerificationError(
                f"Signature {signature!r} returned {sorted(values)}, "
                f"expected {sorted(outputs_of(signature, expected))}."
            )
        for name, output in values.items():
            output, reference = output.numpy(), expected[name]
            label = signature if name == FEATURES_OUTPUT else f"{signature}_{name}"
            if output.shape != reference.shape:
                raise ExportVerificationError(
                    f"Signature {signature!r} returned {name!r} of shape {output.shape}, "
                    f"the Keras model {reference.shape}."
                )
            error = float(np.max(np.abs(output - reference)))
            report[f"{label}_max_abs_error"] = error
            if not error <= max_abs_error:
                raise ExportVerificationError(
                    f"Signature {signature!r} output {name!r} differs from the Keras "
                    f"model by up to {error:.3g} (allowed: {max_abs_error:.3g})."
                )
    for name in (FEATURES_OUTPUT, EMBEDDING_OUTPUT):
        norm_error = float(np.max(np.abs(np.linalg.norm(expected[name], axis=-1) - 1.0)))
        if not norm_error <= 1e-3:
            raise ExportVerificationError(f"{name!r} is not unit-norm (error {norm_error:.3g}).")
    return report


def outputs_of(signature, pyramid_outputs):
    """The output names of `signature` (all of the `pyramid` outputs for `pyramid`)."""
    return list(pyramid_outputs) if signature == PYRAMID_SIGNATURE else [FEATURES_OUTPUT]


def _version_path(export_dir, version):
    if version is None:
        version = next_version(export_dir)
    version = int(version)
    if version < 0:
        raise ValueError(f"The version must be a non-negative integer, got {version}.")
    path = os.path.join(export_dir, str(version))
    if tf.io.gfile.exists(path):
        raise FileExistsError(
            f"Version {version} already exists at {path!r}; exports are never overwritten. "
            "Pick another --version or omit it to use the next free one."
        )
    return version, path


def export_saved_model(
    encoder,
    export_dir,
    version=None,
    sample_size=224,
    num_sample_images=4,
    warmup_batch_size=1,
    metadata=None,
):
    """Exports `encoder` to `export_dir/<version>/` for TensorFlow Serving.

    Args:
        encoder: a `DenseEncoder` (the query encoder); the export serves its
            `SERVED_REPRESENTATION` as `features` whatever its own `output` is.
        export_dir: the model's base directory, as given to `tensorflow_model_server
            --model_base_path`.
        version: integer version; by default 1 if free, else the next free integer. An
            existing version is an error.
        sample_size: height and width of the verification and warmup images (a multiple
            of 32).
        num_sample_images: number of images the export is verified on.
        warmup_batch_size: images in the warmup request.
        metadata: optional JSON-serialisable dict stored in
            `assets.extra/vader_export.json` (e.g. the source checkpoint).

    Returns:
        The path of the written version directory.
    """
    if sample_size % INPUT_MULTIPLE:
        raise ValueError(f"sample_size must be a multiple of {INPUT_MULTIPLE}, got {sample_size}.")
    storage.makedirs(export_dir)
    version, final_path = _version_path(export_dir, version)
    remove_stale_temporaries(export_dir)
    images, image_source = sample_images_lib.sample_images(num_sample_images, sample_size)
    tmp_path = storage.staging_directory(final_path, f"{TMP_PREFIX}{version}-{os.getpid()}")
    try:
        logging.info("Writing SavedModel to %s", tmp_path)
        module = EncoderServingModule(encoder)
        tf.saved_model.save(module, tmp_path, signatures=module.signatures())
        write_warmup_requests(os.path.join(tmp_path, WARMUP_FILE), images[:warmup_batch_size])
        verification = verify_export(tmp_path, encoder, images)
        logging.info("Export verified on %d %s images: %s", len(images), image_source, verification)
        storage.write_json_atomic(
            os.path.join(tmp_path, METADATA_FILE),
            {
                **(metadata or {}),
                **export_metadata(encoder),
                "signatures": sorted(module.signatures()),
                "verification": {**verification, "images": image_source},
            },
        )
        # Re-checked right before the rename: another export may have taken the version.
        _version_path(export_dir, version)
        storage.publish_directory(tmp_path, final_path)
    finally:
        if tf.io.gfile.exists(tmp_path):
            tf.io.gfile.rmtree(tmp_path)
    logging.info("Exported version %d to %s", version, final_path)
    return final_path
