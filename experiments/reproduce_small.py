"""Small-scale reproduction of VADeR's claim: VADeR vs MoCo v2 vs random init, over seeds.

For each seed, pretrains VADeR and MoCo v2 from the same random initialisation on BSDS500 +
CamVid train frames, continues both from the MoCo backbone (the paper's setting, equal
total compute), evaluates every encoder with frozen features (CamVid linear probe, DAVIS
label propagation, BSDS500 correspondence) and writes RESULTS.md with mean ± std over the
seeds, plus figures and result JSONs under --results_dir. See `vader_tf/studies/small_study.py`.

    python experiments/reproduce_small.py --before_dir=results/before_fixes
    python experiments/reproduce_small.py --seeds=0 --train_steps=20 --image_size=64 ...  # smoke

Every field of `StudyConfig` is a flag of the same name. Rerunning resumes: pretraining
continues from --run_dir and evaluations whose JSON exists are skipped (unless --force),
so the study can be run in pieces (e.g. `--seeds=1`, then `--seeds=0,1,2` for the report).
Needs matplotlib: pip install 'vader-tf[results]'.
"""

import os
import sys

from absl import app, flags

from vader_tf import cli
from vader_tf.config_flags import define_flags, from_flags
from vader_tf.studies import small_study

define_flags(small_study.StudyConfig)
flags.FLAGS.set_default("data_root", os.environ.get("VADER_SHARED_DATA", "../shared/data"))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = from_flags(small_study.StudyConfig)
    config.validate()
    cli.check_outputs(config, directories=("run_dir", "results_dir"), files=("report",))
    small_study.run_study(config, command=["python", *sys.argv])
    print(f"Wrote {config.report}; figures and JSONs in {config.results_dir}/")


if __name__ == "__main__":
    cli.run(main)
