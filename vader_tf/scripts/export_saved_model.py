"""Exports a trained dense encoder as a versioned SavedModel for TensorFlow Serving.

From a pretraining run directory (latest checkpoint unless --checkpoint):

    vader-export --model_dir=runs/vader_r50 --export_dir=serving/vader

or from a `.keras` file:

    vader-export --encoder=encoder.keras --export_dir=serving/vader

writes `serving/vader/<version>/` (see `docs/export.md` for the signatures). Every path
may also be on a filesystem `tf.io.gfile` knows, e.g. `gs://bucket/serving/vader`.
"""

from absl import app, flags, logging

from vader_tf import cli, storage
from vader_tf.run_dir import RunDir, load_encoder
from vader_tf.export import saved_model

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Pretraining run directory.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Checkpoint prefix in --model_dir (default: the latest)."
)
_ENCODER = flags.DEFINE_string("encoder", None, "A `.keras` file holding a DenseEncoder.")
_EXPORT_DIR = flags.DEFINE_string(
    "export_dir", None, "Model base directory; the export goes to EXPORT_DIR/<version>/."
)
_VERSION = flags.DEFINE_integer(
    "version", None, "Version number (default: 1 if free, else the next free integer)."
)
_SAMPLE_SIZE = flags.DEFINE_integer(
    "sample_size", 224, "Height and width of the verification and warmup images."
)
flags.mark_flag_as_required("export_dir")


def main(argv):
    del argv
    if bool(_MODEL_DIR.value) == bool(_ENCODER.value):
        raise app.UsageError("Give exactly one of --model_dir and --encoder.")
    if _CHECKPOINT.value and not _MODEL_DIR.value:
        raise app.UsageError("--checkpoint needs --model_dir.")
    storage.check_writable_dir(_EXPORT_DIR.value, "export_dir")
    if _ENCODER.value:
        source = {"encoder": _ENCODER.value}
        encoder = load_encoder(_ENCODER.value)
    else:
        checkpoint = _CHECKPOINT.value or RunDir(_MODEL_DIR.value).latest_checkpoint()
        source = {"model_dir": _MODEL_DIR.value, "checkpoint": checkpoint}
        encoder = load_encoder(_MODEL_DIR.value, checkpoint=checkpoint)
    logging.info("Loaded encoder from %s", source)
    path = saved_model.export_saved_model(
        encoder,
        _EXPORT_DIR.value,
        version=_VERSION.value,
        sample_size=_SAMPLE_SIZE.value,
        metadata={"source": source},
    )
    logging.info("SavedModel written to %s", path)


def run():
    """The `vader-export` command (console entry point)."""
    cli.run(main)


if __name__ == "__main__":
    run()
