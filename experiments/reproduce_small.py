"""Small-scale reproduction of VADeR's claim: VADeR vs MoCo v2 vs a random encoder.

One command pretrains VADeR and MoCo v2 from the same random initialisation on BSDS500 +
CamVid train frames, evaluates both and the random encoder with frozen features (CamVid
linear probe, DAVIS label propagation, BSDS500 correspondence), and writes RESULTS.md
and figures and result JSONs under --results_dir. See `vader_tf.eval.comparison`.

    python experiments/reproduce_small.py   # ~75 min on 2 shared CPU cores (35 pretraining)
    python experiments/reproduce_small.py --train_steps=20 --image_size=64 ...  # smoke

Rerunning resumes: pretraining continues from --run_dir and evaluations whose JSON exists
are skipped (unless --force). Needs matplotlib: pip install 'vader-tf[results]'.
"""

import os
import sys

from absl import app, flags

from vader_tf import cli
from vader_tf.eval.comparison import ComparisonConfig, run_comparison
from vader_tf.eval.encoders import LAYERS

DEFAULTS = ComparisonConfig(data_root="")
FLAGS = flags.FLAGS
flags.DEFINE_string(
    "data_root",
    os.environ.get("VADER_SHARED_DATA", "../shared/data"),
    "Folder holding bsds500/, camvid/ and davis2016/ (default: $VADER_SHARED_DATA).",
)
flags.DEFINE_string("run_dir", DEFAULTS.run_dir, "Pretraining runs go to <run_dir>/<method>.")
flags.DEFINE_string("results_dir", DEFAULTS.results_dir, "Result JSONs and figures.")
flags.DEFINE_string("report", DEFAULTS.report, "Markdown report written at the end.")
flags.DEFINE_string(
    "notes", None, "Markdown findings for the report (default: <results_dir>/findings.md)."
)
flags.DEFINE_string("backbone", DEFAULTS.backbone, "Backbone of both methods.")
flags.DEFINE_integer("image_size", DEFAULTS.image_size, "Pretraining view size (multiple of 32).")
flags.DEFINE_integer("batch_size", DEFAULTS.batch_size, "Pretraining batch size.")
flags.DEFINE_integer("train_steps", DEFAULTS.train_steps, "Pretraining steps of each method.")
flags.DEFINE_float("base_learning_rate", DEFAULTS.base_learning_rate, "Base LR (per 256 images).")
flags.DEFINE_integer("checkpoint_every", DEFAULTS.checkpoint_every, "Steps between checkpoints.")
flags.DEFINE_integer("seed", DEFAULTS.seed, "Seed of the shared initialisation, data and evals.")
flags.DEFINE_list("layers", list(DEFAULTS.layers), f"Taps of VADeR evaluated, from {LAYERS}.")
flags.DEFINE_list(
    "baseline_layers", list(DEFAULTS.baseline_layers), "Taps of MoCo and the random encoder."
)
flags.DEFINE_integer("probe_image_size", DEFAULTS.probe_image_size, "CamVid short side.")
flags.DEFINE_integer("probe_steps", DEFAULTS.probe_steps, "Linear-probe optimisation steps.")
flags.DEFINE_integer("probe_limit", None, "Use only the first N CamVid frames of each split.")
flags.DEFINE_integer("davis_image_size", DEFAULTS.davis_image_size, "DAVIS short side.")
flags.DEFINE_integer("davis_max_frames", None, "Use only the first N frames of each sequence.")
flags.DEFINE_integer(
    "correspondence_image_size", DEFAULTS.correspondence_image_size, "BSDS500 short side."
)
flags.DEFINE_integer(
    "correspondence_images", DEFAULTS.correspondence_images, "BSDS500 val photos warped."
)
flags.DEFINE_bool("force", False, "Recompute evaluations whose result JSON exists.")
flags.DEFINE_integer("verbose", DEFAULTS.verbose, "1 shows pretraining progress bars.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    for name in ("layers", "baseline_layers"):
        unknown = set(FLAGS[name].value) - set(LAYERS)
        if unknown:
            raise app.UsageError(f"Unknown --{name} {sorted(unknown)}; expected some of {LAYERS}.")
    names = [name for name in vars(DEFAULTS) if name in FLAGS]
    config = ComparisonConfig(**{name: FLAGS[name].value for name in names})
    config.layers, config.baseline_layers = tuple(config.layers), tuple(config.baseline_layers)
    run_comparison(config, command=["python", *sys.argv])
    print(f"Wrote {config.report}; figures and JSONs in {config.results_dir}/")


if __name__ == "__main__":
    cli.run(main)
