r"""How VADeR's margin over MoCo v2 changes with compute (issue 20 §3): the study's VADeR
and MoCo v2 runs pretrained for 1x, 2x and 4x its budget (1200, 2400, 4800 steps) in
PretrainConfig's default precision (bfloat16 where the hardware has it), each evaluated on
the three evaluations at the served output (`decoder+P4@0.25`), `decoder` and `P4`; writes
<results_dir>/compute_curve.json, .md and .png after every run. See
`vader_tf/studies/compute_curve_study.py`.

    python experiments/compute_curve.py                         # seed 0, 1200/2400/4800
    python experiments/compute_curve.py --seeds=1 --steps=4800  # a second seed at 4x
    python experiments/compute_curve.py --steps=2,4 --image_size=64 --batch_size=4 \
        --checkpoint_every=1 --probe_image_size=32 --probe_steps=3 --probe_limit=2 \
        --davis_image_size=32 --davis_max_frames=2 --correspondence_image_size=64 \
        --correspondence_images=1                               # smoke

Every field of `CurveConfig` is a flag of the same name, except `train_steps` (`--steps`
gives the lengths). Rerunning resumes: pretraining continues from --run_dir (an
interrupted run from its last checkpoint) and evaluations whose JSON exists are skipped.
The study's report (experiments/reproduce_small.py) shows the curve when it is in
<its results_dir>/compute_curve (the default --results_dir here).
Needs matplotlib: pip install 'vader-tf[results]'.
"""

import os
import sys

from absl import app, flags

from vader_tf import cli
from vader_tf.config_flags import define_flags, from_flags
from vader_tf.studies import compute_curve_study

define_flags(compute_curve_study.CurveConfig, exclude=("train_steps",))
flags.FLAGS.set_default("data_root", os.environ.get("VADER_SHARED_DATA", "../shared/data"))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = from_flags(compute_curve_study.CurveConfig)
    config.validate()
    cli.check_outputs(config, directories=("run_dir", "results_dir"))
    compute_curve_study.run(config, command=["python", *sys.argv])
    print(f"Wrote {config.results_dir}/compute_curve.json, .md and .png")


if __name__ == "__main__":
    cli.run(main)
