"""Speed against quality (issue 13 §1-2): the small reproduction's VADeR pretraining in
float32, in bfloat16, and with the one-direction step (same seed, same images seen),
each probed on CamVid val; writes <results_dir>/speed_quality.json and .md.
See `vader_tf/studies/speed_quality_study.py`.

    python experiments/speed_quality.py                       # 300 steps per variant
    python experiments/speed_quality.py --train_steps=3 --image_size=64 --batch_size=4 \
        --probe_steps=3 --probe_limit=2 --probe_image_size=32    # smoke

Every field of `SpeedQualityConfig` is a flag of the same name. Rerunning resumes:
pretraining continues from --run_dir and probes whose JSON exists are skipped.
"""

import os
import sys

from absl import app, flags

from vader_tf import cli
from vader_tf.config_flags import define_flags, from_flags
from vader_tf.studies import speed_quality_study

define_flags(speed_quality_study.SpeedQualityConfig)
flags.FLAGS.set_default("data_root", os.environ.get("VADER_SHARED_DATA", "../shared/data"))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = from_flags(speed_quality_study.SpeedQualityConfig)
    config.validate()
    cli.check_outputs(config, directories=("run_dir", "results_dir"))
    speed_quality_study.run(config, command=["python", *sys.argv])
    print(f"Wrote {config.results_dir}/speed_quality.json and speed_quality.md")


if __name__ == "__main__":
    cli.run(main)
