"""Exports a run's trained backbone as a keras-hub preset directory.

    vader-export-keras-hub-preset --model_dir=runs/vader_r50 --preset_dir=presets/vader_r50

writes `presets/vader_r50/` (any `tf.io.gfile` path, e.g. `gs://bucket/presets/vader_r50`),
which loads with `keras_hub.models.Backbone.from_preset("presets/vader_r50")` without
vader_tf and feeds keras-hub tasks such as `DeepLabV3ImageSegmenter`; see
`docs/finetune.md`. What the directory holds: `vader_tf.export.keras_hub_preset`.
"""

from absl import flags, logging

from vader_tf import cli, storage
from vader_tf.export import keras_hub_preset

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Pretraining run directory.", required=True)
_PRESET_DIR = flags.DEFINE_string(
    "preset_dir", None, "Preset directory to write (must be missing or empty).", required=True
)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Checkpoint prefix in --model_dir (default: the latest)."
)


def main(argv):
    del argv
    storage.check_writable_dir(_PRESET_DIR.value, "preset_dir")
    metadata = keras_hub_preset.export_keras_hub_preset(
        _MODEL_DIR.value, _PRESET_DIR.value, checkpoint=_CHECKPOINT.value
    )
    logging.info("Preset metadata: %s", metadata)
    print(f"wrote keras-hub preset {_PRESET_DIR.value} (step {metadata['step']})")


def run():
    """The `vader-export-keras-hub-preset` command (console entry point)."""
    cli.run(main)


if __name__ == "__main__":
    run()
