"""Converts an exported SavedModel to a TFLite / LiteRT model and reports its parity.

    vader-export-tflite --saved_model=serving/vader/1 --output=vader.tflite \
        --quantization=int8 --input_size=224

writes `vader.tflite` and `vader.parity.json` (cosine similarity to the SavedModel,
max abs error, file size, median latency). See `docs/export.md`.
"""

from absl import flags, logging

from vader_tf import cli, storage
from vader_tf.export import sample_images, tflite

_SAVED_MODEL = flags.DEFINE_string(
    "saved_model",
    None,
    "A version directory written by export_saved_model.py, or its export dir (newest version).",
)
_OUTPUT = flags.DEFINE_string("output", None, "The .tflite file to write.")
_QUANTIZATION = flags.DEFINE_enum(
    "quantization", "none", tflite.QUANTIZATION_MODES, "Weight/activation quantization."
)
_INPUT_SIZE = flags.DEFINE_integer(
    "input_size", 224, "Fixed input height and width (a multiple of 32)."
)
_DYNAMIC_SIZE = flags.DEFINE_bool(
    "dynamic_size", False, "Keep batch, height and width dynamic instead of [1, S, S, 3]."
)
_CALIBRATION_IMAGES = flags.DEFINE_string(
    "calibration_images",
    None,
    "Folder of images for int8 calibration (default: scikit-image's sample photos).",
)
_NUM_CALIBRATION_IMAGES = flags.DEFINE_integer(
    "num_calibration_images", 32, "Number of (cropped) calibration images."
)
_NUM_EVALUATION_IMAGES = flags.DEFINE_integer(
    "num_evaluation_images", 8, "Number of images the parity report is measured on."
)
_ALLOW_FLEX = flags.DEFINE_bool(
    "allow_flex", False, "Permit TensorFlow (select/flex) ops; they need the Flex delegate."
)
_NUM_THREADS = flags.DEFINE_integer("num_threads", 1, "Interpreter threads for the latency.")
_MIN_COSINE = flags.DEFINE_float(
    "min_cosine",
    None,
    "Fail, writing nothing, if the worst per-pixel cosine similarity is below this.",
)
flags.mark_flags_as_required(["saved_model", "output"])


def main(argv):
    del argv
    storage.check_writable_file(_OUTPUT.value, "output")
    size = _INPUT_SIZE.value
    calibration = None
    if _QUANTIZATION.value == "int8":
        calibration, source = sample_images.sample_images(
            _NUM_CALIBRATION_IMAGES.value, size, folder=_CALIBRATION_IMAGES.value
        )
        logging.info("Calibrating on %d images from %s", len(calibration), source)
    # Held out: when calibration also uses the sample photos, evaluate on later crops.
    start = 0 if _CALIBRATION_IMAGES.value else _NUM_CALIBRATION_IMAGES.value
    evaluation, _ = sample_images.sample_images(
        _NUM_EVALUATION_IMAGES.value, size, start=start
    )
    report = tflite.export_tflite(
        _SAVED_MODEL.value,
        _OUTPUT.value,
        quantization=_QUANTIZATION.value,
        input_size=size,
        dynamic_size=_DYNAMIC_SIZE.value,
        calibration_images=calibration,
        evaluation_images=evaluation,
        allow_flex=_ALLOW_FLEX.value,
        num_threads=_NUM_THREADS.value,
        min_cosine=_MIN_COSINE.value,
    )
    logging.info(
        "Wrote %s (%.1f MB): cosine mean %.6f, worst %.6f; max abs error %.3g; "
        "median latency %.1f ms (%d threads).",
        _OUTPUT.value,
        report["file_size_bytes"] / 1e6,
        report["cosine_mean"],
        report["cosine_worst"],
        report["max_abs_error"],
        report["median_latency_ms"],
        report["num_threads"],
    )


def run():
    """The `vader-export-tflite` command (console entry point)."""
    cli.run(main)


if __name__ == "__main__":
    run()
