"""Pretrains dense features with VADeR (or the MoCo v2 baseline).

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
import typing

from absl import app, flags, logging

from vader_tf import cli
from vader_tf.training.pretrain import PretrainConfig, pretrain

HELP = {
    "model_dir": "Run directory: checkpoints, TensorBoard logs, configs.",
    "data": "Images: 'samples' (scikit-image's photos), 'folder:PATH' or 'tfds:NAME[:SPLIT]'.",
    "method": "'vader' (pixel-level) or 'moco' (image-level MoCo v2 baseline).",
    "backbone": "resnet18, resnet34, resnet50 or resnet101.",
    "backbone_preset": "keras-hub ResNet preset name or local preset dir (needs internet for names).",
    "init_weights": "Backbone weights (*.weights.h5), e.g. from export/convert_torch_weights.py.",
    "decoder_channels": "Width of the FPN decoder and the projection head.",
    "embedding_dim": "Channels of the output embedding.",
    "image_size": "Side of each square view, a multiple of 32.",
    "batch_size": "Global batch size (image pairs per step over all replicas).",
    "num_points": "Matched points per image pair (VADeR).",
    "min_crop_scale": "Smallest random-resized-crop area fraction.",
    "color_jitter": "Colour jitter strength (brightness/contrast/saturation; hue is a quarter); 0 = off.",
    "grayscale_prob": "Probability of converting a view to grayscale.",
    "blur_prob": "Probability of Gaussian blur.",
    "flip_prob": "Probability of a horizontal flip.",
    "min_overlap": "Smallest accepted crop overlap (VADeR only; MoCo draws independent crops as MoCo v2).",
    "cache_decoded_mb": "Serve a source whose decoded images fit in this many MB from memory (samples, folders); 0 = off.",
    "queue_size": "Negatives kept in the queue (K).",
    "queue_points_per_image": "Key pixels per image enqueued each step (VADeR).",
    "temperature": "InfoNCE temperature.",
    "ema_momentum": "Momentum of the key network's EMA.",
    "momentum_schedule": "'constant' or 'cosine' (momentum -> 1 by the last step).",
    "bn_groups": "BN groups per replica for the shuffle-BN guard (1 = off).",
    "shuffle_bn": "Shuffle images across BN groups for the key network.",
    "symmetric_loss": "Loss both ways per pair (default); false = MoCo v2/DenseCL one direction, half the backbone work per pair.",
    "train_steps": "Total optimiser steps.",
    "base_learning_rate": "SGD learning rate for a batch of reference_batch_size.",
    "reference_batch_size": "Batch size at which base_learning_rate applies (linear scaling).",
    "warmup_steps": "Linear warm-up steps before the cosine decay.",
    "weight_decay": "L2 weight decay added to the gradient before momentum (PyTorch SGD, as MoCo v2: 1e-4), on all parameters incl. BN and biases.",
    "sgd_momentum": "SGD momentum.",
    "mixed_precision": "'none', 'mixed_float16' (GPU) or 'mixed_bfloat16'.",
    "strategy": "'auto', 'default', 'mirrored' or 'multi_worker' (from TF_CONFIG).",
    "num_cpu_devices": "Split the CPU into this many logical devices (multi-replica without GPUs).",
    "checkpoint_every": "Steps between checkpoints.",
    "log_every": "Steps between metric reads (one compiled loop call).",
    "keep_checkpoints": "Checkpoints kept.",
    "seed": "Seed of data order, augmentation, queue init and BN shuffles.",
    "deterministic": "Enable TensorFlow op determinism (slower).",
    "verbose": "1 shows a progress bar.",
}


def _define_flags():
    for field in dataclasses.fields(PretrainConfig):
        kind = field.type
        if typing.get_origin(kind) is typing.Union or "|" in str(kind):
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        define = {
            bool: flags.DEFINE_bool,
            int: flags.DEFINE_integer,
            float: flags.DEFINE_float,
            str: flags.DEFINE_string,
        }[kind]
        define(field.name, field.default, HELP[field.name])


_define_flags()
flags.DEFINE_bool("dry_run", False, "Print the resolved configuration as JSON and exit.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = PretrainConfig(**{f.name: FLAGS[f.name].value for f in dataclasses.fields(PretrainConfig)})
    if FLAGS.dry_run:
        config.validate()
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
