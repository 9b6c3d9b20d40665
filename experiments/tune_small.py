"""Tunes VADeR's settings on the tuning sets only (CamVid val, the 3 shared DAVIS
sequences): the small study's VADeR run with one setting changed per variant, evaluated
at the study's protocols; writes <results_dir>/tuning.json and tuning.md. See
`vader_tf/studies/tuning_study.py`.

    python experiments/tune_small.py --variants=default,temperature_0.1,decoder_256
    python experiments/tune_small.py --variants=default,global_0.5 --start=moco \
        --run_dir=runs/reproduce_small --results_dir=results/methods/from_moco
    python experiments/tune_small.py --variants=default,points_128 --train_steps=3 \
        --image_size=64 --batch_size=4 --probe_steps=3 --probe_limit=2 \
        --probe_image_size=32 --davis_max_frames=2    # smoke
    python experiments/tune_small.py --variants=default,global_0.5 --seeds=0,1,2 --held_out \
        --run_dir=runs/reproduce_small --results_dir=results/methods/carry  # carry a choice

`--held_out` adds the BSDS500 correspondence photos, for a variant already chosen: the
study's report (experiments/reproduce_small.py) puts the variants found in
<its results_dir>/methods/carry and methods/from_moco through issue 20's goal check.

Every field of `TuningConfig` is a flag of the same name. With the study's --run_dir and
--results_dir, `default` is the study's own VADeR run. Rerunning resumes: pretraining
continues from --run_dir and evaluations whose JSON exists are skipped.
"""

import os
import sys

from absl import app, flags

from vader_tf import cli
from vader_tf.config_flags import define_flags, from_flags
from vader_tf.studies import tuning_study

define_flags(tuning_study.TuningConfig)
flags.FLAGS.set_default("data_root", os.environ.get("VADER_SHARED_DATA", "../shared/data"))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = from_flags(tuning_study.TuningConfig)
    config.validate()
    cli.check_outputs(config, directories=("run_dir", "results_dir"))
    tuning_study.run(config, command=["python", *sys.argv])
    print(f"Wrote {config.results_dir}/tuning.json and tuning.md")


if __name__ == "__main__":
    cli.run(main)
