"""Conversion of an exported SavedModel (see `saved_model.py`) to TFLite / LiteRT.

The conversion starts from the SavedModel, not from Keras: converting concrete
functions directly loses the weights on this stack. The `serving_default` signature
(uint8 `images` -> float32 `features`, the served representation) is converted either
with a fixed input size `[1, size, size, 3]` or with dynamic height, width and batch
(`dynamic_size=True`).

Quantization modes:

- "none": float32 weights and activations.
- "float16": float16 weights, dequantized to float32 at load time.
- "dynamic": int8 weights, activations quantized on the fly (dynamic range).
- "int8": int8 weights and activations, calibrated on representative images; input
  stays uint8 pixels and output float32 features. Ops without an int8 kernel would stay
  float (for the encoder only the initial uint8 -> float32 cast does).

`parity_report` measures how close a converted model is to the SavedModel.

The SavedModel and the output may be on any filesystem `tf.io.gfile` knows (e.g.
`gs://`): the converter works on a local temporary copy of the re-saved signature, the
interpreter reads the model from memory, and the `.tflite` file and its report are
written through `vader_tf.storage`.
"""

import os
import re
import statistics
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import logging

from vader_tf import storage
from vader_tf.export import saved_model as saved_model_lib
from vader_tf.serving_contract import (
    FEATURES_OUTPUT,
    IMAGES_INPUT,
    INPUT_DTYPE,
    INPUT_MULTIPLE,
    SERVING_SIGNATURE,
)

QUANTIZATION_MODES = ("none", "float16", "dynamic", "int8")


class FlexOpsRequiredError(RuntimeError):
    """The model needs TensorFlow (flex / select) ops that TFLite builtins lack."""


def _resave_serving_signature(saved_model_dir, input_shape, output_dir):
    """Re-saves `serving_default` alone, with the given input shape, for conversion.

    Converting the export directly keeps its weights as uninitialised TFLite resource
    variables on this stack (a ~100 KB model returning NaN); a re-saved signature of
    the loaded model converts with the weights frozen in.
    """
    loaded = tf.saved_model.load(saved_model_dir)
    serve = loaded.signatures[SERVING_SIGNATURE]
    module = tf.Module()
    module.exported = loaded

    @tf.function(input_signature=[tf.TensorSpec(input_shape, INPUT_DTYPE, name=IMAGES_INPUT)])
    def serve_images(images):
        return serve(**{IMAGES_INPUT: images})

    module.serve = serve_images
    tf.saved_model.save(module, output_dir, signatures={SERVING_SIGNATURE: serve_images})
    return output_dir


def _tf_ops_in_error(message):
    """Names of the TensorFlow ops a converter error reports as lacking a TFLite kernel."""
    return sorted(set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", message)))


def convert(
    saved_model_dir,
    quantization="none",
    input_size=224,
    dynamic_size=False,
    representative_images=None,
    allow_flex=False,
):
    """Converts an exported SavedModel's `serving_default` to a TFLite flatbuffer.

    Args:
        saved_model_dir: a version directory written by `export_saved_model`.
        quantization: one of `QUANTIZATION_MODES`.
        input_size: height and width of the fixed input (a multiple of 32); also the
            calibration image size.
        dynamic_size: keep batch, height and width dynamic (resize the interpreter's
            input before running it).
        representative_images: uint8 `[N, size, size, 3]` calibration images; required
            for "int8".
        allow_flex: permit TensorFlow (select) ops; otherwise needing one is an error.

    Returns:
        The `.tflite` model as bytes.

    Raises:
        FlexOpsRequiredError: the model needs non-builtin ops and `allow_flex` is False.
    """
    if quantization not in QUANTIZATION_MODES:
        raise ValueError(f"quantization must be one of {QUANTIZATION_MODES}, got {quantization!r}.")
    if input_size % INPUT_MULTIPLE:
        raise ValueError(f"input_size must be a multiple of {INPUT_MULTIPLE}, got {input_size}.")
    if quantization == "int8" and representative_images is None:
        raise ValueError("int8 quantization needs representative_images for calibration.")

    # Local on purpose: the converter reads the SavedModel with local file access.
    with tempfile.TemporaryDirectory(prefix="vader-tflite-") as tmp:
        input_shape = [None, None, None, 3] if dynamic_size else [1, input_size, input_size, 3]
        source = _resave_serving_signature(saved_model_dir, input_shape, tmp)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            source, signature_keys=[SERVING_SIGNATURE]
        )
        supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantization == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantization == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif quantization == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = _representative_dataset(representative_images)
            supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        if allow_flex:
            supported_ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
        converter.target_spec.supported_ops = supported_ops
        try:
            return converter.convert()
        # The converter raises `ConverterError` classes from private modules.
        except Exception as error:  # pylint: disable=broad-except
            ops = _tf_ops_in_error(str(error))
            if not allow_flex and ops:
                raise FlexOpsRequiredError(
                    "Conversion to TFLite builtin ops failed; the model needs TensorFlow "
                    f"op(s) {', '.join(ops)} that TFLite builtins lack. Pass --allow_flex "
                    "(allow_flex=True) to use them via the Flex delegate."
                ) from error
            raise


def _representative_dataset(images):
    def generate():
        for image in images:
            yield {IMAGES_INPUT: np.asarray(image[None], np.uint8)}

    return generate


class TFLiteRunner:
    """Runs a converted model's `serving_default` with the LiteRT interpreter.

    Args:
        model: path of the `.tflite` file (on any `tf.io.gfile` filesystem) or its bytes.
        num_threads: interpreter threads.
    """

    def __init__(self, model, num_threads=1):
        # Imported here: ai-edge-litert is an optional dependency (extra "tflite").
        from ai_edge_litert.interpreter import Interpreter

        content = model if isinstance(model, bytes) else storage.read_bytes(model)
        self.interpreter = Interpreter(model_content=content, num_threads=num_threads)
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self._shape = None
        self.interpreter.allocate_tensors()

    def __call__(self, images):
        """uint8 `[N, H, W, 3]` images -> float32 `[N, H/4, W/4, C]` served features."""
        images = np.asarray(images, np.uint8)
        if images.ndim != 4 or images.shape[1] % INPUT_MULTIPLE or images.shape[2] % INPUT_MULTIPLE:
            # The graph's own size check does not survive conversion to TFLite.
            raise ValueError(
                f"images must be [N, H, W, 3] with H, W multiples of {INPUT_MULTIPLE}; "
                f"got {images.shape}."
            )
        if tuple(self._input["shape"]) != images.shape:
            if -1 not in self._input["shape_signature"]:
                raise ValueError(
                    f"This model has the fixed input shape {tuple(self._input['shape'])}; "
                    f"got {images.shape}."
                )
            self.interpreter.resize_tensor_input(self._input["index"], images.shape)
            self.interpreter.allocate_tensors()
            self._input = self.interpreter.get_input_details()[0]
            self._output = self.interpreter.get_output_details()[0]
        self.interpreter.set_tensor(self._input["index"], images)
        self.interpreter.invoke()
        return self._dequantize(self.interpreter.get_tensor(self._output["index"]))

    def _dequantize(self, values):
        scale, zero_point = self._output["quantization"]
        if values.dtype != np.float32 and scale:
            return (values.astype(np.float32) - zero_point) * scale
        return values.astype(np.float32)

    def median_latency_ms(self, images, runs=10):
        """Median wall time of one `invoke` on `images`, after one warm-up run."""
        self(images)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.interpreter.invoke()
            times.append((time.perf_counter() - start) * 1000.0)
        return statistics.median(times)


def parity_report(tflite_model, saved_model_dir, images, num_threads=1, latency_runs=10):
    """Compares a converted model with the SavedModel it came from.

    Args:
        tflite_model: the `.tflite` model as bytes.
        saved_model_dir: the SavedModel version directory it was converted from.
        images: uint8 `[N, H, W, 3]` evaluation images of the TFLite input size.
        num_threads: interpreter threads (latency depends on it).
        latency_runs: timed invocations of a single image.

    Returns:
        A dict with the per-pixel cosine similarity (mean and worst), the maximum
        absolute error, the file size and the median latency of one image.
    """
    serve = tf.saved_model.load(saved_model_dir).signatures[SERVING_SIGNATURE]
    runner = TFLiteRunner(tflite_model, num_threads=num_threads)
    expected, actual = [], []
    for image in images:  # One at a time: fixed-size models take a batch of one.
        batch = image[None]
        expected.append(
            serve(**{IMAGES_INPUT: tf.constant(batch)})[FEATURES_OUTPUT].numpy()
        )
        actual.append(runner(batch))
    expected, actual = np.concatenate(expected), np.concatenate(actual)
    cosine = np.sum(expected * actual, axis=-1) / np.maximum(
        np.linalg.norm(expected, axis=-1) * np.linalg.norm(actual, axis=-1), 1e-12
    )
    return {
        "saved_model": storage.absolute(saved_model_dir),
        "num_images": int(len(images)),
        "image_shape": list(images.shape[1:]),
        "cosine_mean": float(np.mean(cosine)),
        "cosine_worst": float(np.min(cosine)),
        "max_abs_error": float(np.max(np.abs(expected - actual))),
        "file_size_bytes": len(tflite_model),
        "median_latency_ms": runner.median_latency_ms(images[:1], runs=latency_runs),
        "num_threads": num_threads,
    }


def report_path(tflite_path):
    """Where the parity report of `X.tflite` goes: `X.parity.json`."""
    return os.path.splitext(tflite_path)[0] + ".parity.json"


def export_tflite(
    saved_model_dir,
    output_path,
    quantization="none",
    input_size=224,
    dynamic_size=False,
    calibration_images=None,
    evaluation_images=None,
    allow_flex=False,
    num_threads=1,
    min_cosine=None,
):
    """Converts, measures parity, and atomically writes `output_path` and its report.

    Args:
        saved_model_dir: a version directory written by `export_saved_model`, or its
            model base directory (its newest version is used).
        output_path: the `.tflite` file to write.
        quantization, input_size, dynamic_size, allow_flex: see `convert`.
        calibration_images: uint8 `[N, size, size, 3]` images for "int8".
        evaluation_images: uint8 `[N, size, size, 3]` images for the parity report.
        num_threads: interpreter threads for the latency measurement.
        min_cosine: if given, fail (writing nothing) when the worst per-pixel cosine
            similarity to the SavedModel is below it.

    Returns:
        The parity report (also written to `report_path(output_path)`).
    """
    saved_model_dir = saved_model_lib.resolve_version_dir(saved_model_dir)
    model = convert(
        saved_model_dir,
        quantization=quantization,
        input_size=input_size,
        dynamic_size=dynamic_size,
        representative_images=calibration_images,
        allow_flex=allow_flex,
    )
    report = parity_report(model, saved_model_dir, evaluation_images, num_threads)
    report.update(
        tflite=storage.absolute(output_path),
        quantization=quantization,
        input_size=None if dynamic_size else input_size,
        dynamic_size=dynamic_size,
    )
    logging.info("TFLite parity: %s", report)
    if min_cosine is not None and not report["cosine_worst"] >= min_cosine:
        raise ValueError(
            f"Worst per-pixel cosine similarity {report['cosine_worst']:.6f} is below "
            f"the required {min_cosine}; nothing written."
        )
    storage.write_atomic(output_path, model)
    storage.write_json_atomic(report_path(output_path), report)
    return report
