"""Worked example: fine-tune a pretrained dense encoder for semantic segmentation.

Loads the encoder with `vader_tf.load_encoder` (trainable), adds a small head on its
FPN decoder output, trains on `--split` with `model.fit` and reports mIoU on
`--eval_split` (see `vader_tf.eval.finetune`). Every field of
`vader_tf.eval.protocols.FinetuneProtocol` is a flag of the same name.

    vader-finetune-segmentation --encoder=runs/vader_r18 \
        --data_root=$VADER_SHARED_DATA/camvid --steps=2000 --output=results/ft_vader.json
"""

import dataclasses

from absl import flags, logging

from vader_tf import cli
from vader_tf.config_flags import define_flags
from vader_tf.data.segmentation import load_segmentation_split, segmentation_dataset
from vader_tf.eval.encoders import load_keras_encoder
from vader_tf.eval.finetune import build_segmentation_model, finetune_segmentation
from vader_tf.eval.protocols import FinetuneProtocol
from vader_tf.eval.segmentation import score_segmentation
from vader_tf.scripts import _eval_flags

FLAGS = flags.FLAGS
_eval_flags.define_encoder_flags("Run dir, .keras file or random:<backbone>.", layer=False)
flags.DEFINE_string("data_root", None, "Folder with <split>.txt files of 'image label' pairs.")
_eval_flags.define_output_flag()
_eval_flags.define_split_flags(split_help="Training split.", eval_split_help="Scored split.")
flags.DEFINE_integer("seed", 0, "Seed of shuffling and of random encoders.")
flags.mark_flags_as_required(["encoder", "data_root", "output"])
define_flags(FinetuneProtocol)


def main(argv):
    del argv
    protocol = _eval_flags.checked_protocol(FinetuneProtocol)
    encoder = load_keras_encoder(FLAGS.encoder, seed=FLAGS.seed)
    model = build_segmentation_model(encoder, protocol)
    train_images, train_labels = load_segmentation_split(
        FLAGS.data_root, FLAGS.split, protocol.image_size, limit=FLAGS.limit
    )
    # Batches drop their remainder: no larger than the training split (recorded as used).
    protocol = dataclasses.replace(
        protocol, batch_size=min(protocol.batch_size, len(train_images))
    )
    history = finetune_segmentation(
        model, segmentation_dataset(train_images, train_labels), protocol, seed=FLAGS.seed
    )
    val_images, val_labels = load_segmentation_split(
        FLAGS.data_root, FLAGS.eval_split, protocol.image_size, limit=FLAGS.limit
    )
    metrics = score_segmentation(
        lambda images: model(images, training=False),
        val_images,
        val_labels,
        protocol.num_classes,
        protocol.ignore_label,
    )
    metrics["final_training_loss"] = history.history["loss"][-1]
    _eval_flags.write_result("finetune_segmentation", metrics, protocol)
    logging.info(
        "%s fine-tuned mIoU on %s: %.4f", FLAGS.encoder, FLAGS.eval_split, metrics["mean_iou"]
    )


def run():
    """The `vader-finetune-segmentation` command (console entry point)."""
    cli.run(main)


if __name__ == "__main__":
    run()
