"""Pretrains dense features with VADeR (or the MoCo v2 or DenseCL baselines, `--method`).

With no flags this is the README's main job: a few minutes of VADeR on the photos that ship
with scikit-image, on the CPU, into ./runs/vader_samples.

    vader-pretrain
    vader-pretrain --flagfile=experiments/configs/imagenet_resnet50_8gpu.cfg
    vader-pretrain --data=folder:/path/to/photos --num_cpu_devices=2

Every field of `vader_tf.training.pretrain.PretrainConfig` is a flag of the same name.
Rerunning with the same --model_dir resumes from its newest checkpoint.
"""

import dataclasses
import json

from absl import app, flags, logging

from vader_tf import cli
from vader_tf.config_flags import define_flags, from_flags
from vader_tf.training import precision, traffic
from vader_tf.training.loop import STEP_COUNTER
from vader_tf.training.pretrain import PretrainConfig, pretrain

define_flags(PretrainConfig)
flags.DEFINE_bool(
    "dry_run",
    False,
    "Print the precision, step counter and all-gather traffic the run would have, then "
    "the resolved configuration as JSON, and exit.",
)
FLAGS = flags.FLAGS

# The sections of `--help` (PretrainConfig's fields and --dry_run); a field missing here
# is listed under "other" (tests/experiments/test_pretrain_script.py checks none is).
FLAG_GROUPS = {
    "data": (
        "data", "image_size", "max_image_pixels", "cache_decoded_mb", "num_points",
        "min_crop_scale", "color_jitter", "grayscale_prob", "blur_prob", "flip_prob",
        "min_overlap",
    ),
    "model": ("backbone", "backbone_preset", "init_weights", "decoder_channels", "embedding_dim"),
    "method": (
        "method", "queue_size", "queue_points_per_image", "temperature",
        "densecl_loss_weight", "global_loss_weight", "global_queue_size", "global_level",
        "coarse_level", "coarse_loss_weight", "propagation_power", "ema_momentum",
        "momentum_schedule", "bn_groups", "shuffle_bn", "symmetric_loss",
    ),
    "optimiser": (
        "batch_size", "train_steps", "base_learning_rate", "reference_batch_size",
        "warmup_steps", "weight_decay", "sgd_momentum", "backbone_learning_rate_scale",
        "mixed_precision", "jit_compile",
    ),
    "run": (
        "model_dir", "strategy", "num_cpu_devices", "checkpoint_every", "log_every",
        "keep_checkpoints", "image_summary_every", "seed", "deterministic", "verbose",
        "dry_run",
    ),
}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = from_flags(PretrainConfig)
    if FLAGS.dry_run:
        config.validate()
        print(precision.describe(config.mixed_precision))
        print(STEP_COUNTER)
        print(traffic.describe_all_gather(config))
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
        "vader-export",
        model_dir=config.model_dir,
        export_dir=cli.export_dir_for(config.model_dir),
    )
    print(f"Next: {export}")


def run():
    """The `vader-pretrain` command (console entry point)."""
    cli.run(main, flag_groups=FLAG_GROUPS)


if __name__ == "__main__":
    run()
