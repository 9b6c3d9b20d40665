"""Serving: latency of the exported SavedModel's `serving_default` against calling the
Keras encoder directly, and of the TFLite conversions (fp32, fp16, dynamic-range, int8)
with their parity to the SavedModel, all on one image of the same size, in one process.

The encoder is the main job's architecture (ResNet-18, 128-channel decoder and head) with
seeded random weights: latency does not depend on the weights, parity does a little
(int8 calibration ranges). "Keras eager" is `encoder(images)`, the direct call of an
encoder returning the served representation (serving contract 3: the L2-normalised
decoder output joined with P4);
"Keras compiled" wraps that call in a `tf.function`, the fairer graph-to-graph reference.
TFLite runs with as many interpreter threads as the machine has cores.

    python -m benchmarks.serving [--quick]
"""

import os
import tempfile

import keras
import tensorflow as tf

from benchmarks import common
from vader_tf.export import export_saved_model, export_tflite
from vader_tf.export.sample_images import sample_images
from vader_tf.export.tflite import QUANTIZATION_MODES, TFLiteRunner
from vader_tf.models.encoder import build_encoder
from vader_tf.serving_contract import SERVED_REPRESENTATION, SERVING_SIGNATURE

NAME = "serving"
TARGET_SAVED_MODEL_OVER_KERAS = 1.1
PARITY_KEYS = ("cosine_mean", "cosine_worst", "max_abs_error", "file_size_bytes")


def run(quick):
    if quick:
        size, repeats, calibration_count, evaluation_count = 64, 3, 2, 1
    else:
        size, repeats, calibration_count, evaluation_count = 224, 20, 16, 4
    modes = ("none", "dynamic") if quick else QUANTIZATION_MODES
    threads = os.cpu_count()
    keras.utils.set_random_seed(0)
    # Returning what `serving_default` serves, so that both compute the same map.
    encoder = build_encoder("resnet18", output=SERVED_REPRESENTATION)
    calibration, _ = sample_images(calibration_count, size)
    evaluation, _ = sample_images(evaluation_count, size, start=calibration_count)
    image = evaluation[:1]
    parity = {}
    with tempfile.TemporaryDirectory(prefix="vader-bench-serving-") as tmp:
        path = export_saved_model(encoder, tmp, sample_size=size, num_sample_images=2)
        serve = tf.saved_model.load(path).signatures[SERVING_SIGNATURE]
        runners = {}
        for mode in modes:
            tflite_path = os.path.join(tmp, f"encoder_{mode}.tflite")
            report = export_tflite(
                path,
                tflite_path,
                quantization=mode,
                input_size=size,
                calibration_images=calibration,
                evaluation_images=evaluation,
                num_threads=threads,
            )
            parity[mode] = {key: report[key] for key in PARITY_KEYS}
            runners[f"tflite_{mode}"] = TFLiteRunner(tflite_path, num_threads=threads)

        pixels = tf.constant(image)
        floats = tf.cast(pixels, tf.float32)
        compiled = tf.function(lambda x: encoder(x, training=False))
        callables = {
            "saved_model": lambda: serve(images=pixels),
            "keras_eager": lambda: encoder(floats, training=False),
            "keras_compiled": lambda: compiled(floats),
            **{name: (lambda r=runner: r(image)) for name, runner in runners.items()},
        }
        times = common.time_interleaved(callables, warmup=2, repeats=repeats)
    latency_ms = {name: 1000 * times[name]["median_s"] for name in callables}
    saved_model_ms = latency_ms["saved_model"]
    results = {
        "median_latency_ms": latency_ms,
        "saved_model_over_keras_eager": saved_model_ms / latency_ms["keras_eager"],
        "saved_model_over_keras_compiled": saved_model_ms / latency_ms["keras_compiled"],
        "tflite_over_saved_model": {
            name: latency_ms[name] / saved_model_ms for name in runners
        },
        "tflite_parity_vs_saved_model": parity,
    }
    settings = {
        "backbone": "resnet18",
        "input_shape": list(image.shape),
        "tflite_threads": threads,
        "quantization_modes": list(modes),
        "calibration_images": calibration_count,
        "parity_images": evaluation_count,
        "repeats": repeats,
        "target_saved_model_over_keras": TARGET_SAVED_MODEL_OVER_KERAS,
    }
    return settings, results


if __name__ == "__main__":
    common.main(NAME, run, __doc__)
