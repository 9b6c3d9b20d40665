"""Renders the TensorBoard pictures of a run (`vader_tf.training.summaries`) as a PNG.

    python experiments/render_tensorboard_pictures.py --model_dir=runs/vader_samples \
        --output=docs/images/tensorboard_pictures.png

reads the pictures back from the run's event files (the PNGs TensorBoard shows), puts
photo | PCA colours | similarity map side by side for each of the 2 photos (the newest
step unless --step), and writes the PNG and, beside it, a JSON naming the run, step and
the similarity histograms' means.
"""

import json
import os

import numpy as np
from absl import flags
from PIL import Image

from vader_tf import cli, storage
from vader_tf.run_dir import RunDir
from vader_tf.training import summaries

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Pretraining run directory.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "PNG file to write.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Step of the pictures (default: the newest).")
_SCALE = flags.DEFINE_integer("scale", 2, "Enlargement of the whole picture.")


def _mean(buckets):
    """The mean of a TensorBoard histogram given as [low, high, count] buckets."""
    centres = (buckets[:, 0] + buckets[:, 1]) / 2
    return float(np.sum(centres * buckets[:, 2]) / max(np.sum(buckets[:, 2]), 1))


def main(argv):
    del argv
    if not _OUTPUT.value.endswith(".png"):
        raise ValueError(f"--output {_OUTPUT.value!r} must end with .png.")
    run = RunDir(_MODEL_DIR.value)
    pictures, histograms = summaries.read_pictures(run.event_files())
    if not pictures:
        raise ValueError(f"--model_dir {_MODEL_DIR.value!r} has no pictures in its event files.")
    step = _STEP.value if _STEP.value is not None else max(pictures)
    if step not in pictures:
        raise ValueError(f"--step {step}: pictures exist at steps {sorted(pictures)}.")
    grid = summaries.picture_grid(pictures[step], scale=_SCALE.value)
    storage.makedirs(os.path.dirname(_OUTPUT.value))
    Image.fromarray(grid).save(_OUTPUT.value)
    record = {
        "model_dir": _MODEL_DIR.value,
        "step": step,
        "picture_steps": sorted(pictures),
        "run_config": run.read_run_config(),
        "similarity_histogram_means": {
            tag: _mean(buckets) for tag, buckets in histograms.get(step, {}).items()
        },
        "columns": list(summaries.PICTURE_TAGS),
    }
    with open(_OUTPUT.value[: -len(".png")] + ".json", "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    print(f"wrote {_OUTPUT.value} (step {step})")


if __name__ == "__main__":
    cli.run(main)
