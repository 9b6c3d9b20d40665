"""Pretrains dense features with VADeR (or the MoCo v2 or DenseCL baselines, `--method`).

With no flags this is the README's main job: a few minutes of VADeR on the photos that ship
with scikit-image, on the CPU, into ./runs/vader_samples.

    python experiments/pretrain.py
    python experiments/pretrain.py --flagfile=experiments/configs/imagenet_resnet50_8gpu.cfg
    python experiments/pretrain.py --data=folder:/path/to/photos --num_cpu_devices=2

Every field of `vader_tf.training.pretrain.PretrainConfig` is a flag of the same name.
Rerunning with the same --model_dir resumes from its newest checkpoint.
"""

import dataclasses
import json

from absl import app, flags, logging

from vader_tf import cli
from vader_tf.config_flags import define_flags, from_flags
from vader_tf.training import precision
from vader_tf.training.loop import STEP_COUNTER
from vader_tf.training.pretrain import PretrainConfig, pretrain

define_flags(PretrainConfig)
flags.DEFINE_bool(
    "dry_run", False,
    "Print the precision and step counter the run would use, then the resolved "
    "configuration as JSON, and exit.",
)
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = from_flags(PretrainConfig)
    if FLAGS.dry_run:
        config.validate()
        print(precision.describe(config.mixed_precision))
        print(STEP_COUNTER)
        print(json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True))
        return
    model, history = pretrain(config)
    if history:
        first, last = history[0], history[-1]
        logging.info(
            "Loss %.3f -> %.3f over steps %d..%d.", first["loss"], last["loss"], first["step"], last["step"]
        )
    print(f"Checkpoints, TensorBoard logs and encoder.keras are in {config.model_dir}/")
    export = cli.command(
        "export/export_saved_model.py", model_dir=config.model_dir, export_dir="exports/vader"
    )
    print(f"Next: {export}")


if __name__ == "__main__":
    cli.run(main)
