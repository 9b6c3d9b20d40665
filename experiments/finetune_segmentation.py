"""Worked example: fine-tune a pretrained dense encoder for semantic segmentation.

Loads the encoder with `vader_tf.load_encoder` (trainable), adds a small head on its
FPN decoder output, trains on `--split` with `model.fit` and reports mIoU on
`--eval_split` (see `vader_tf.eval.finetune`).

    python experiments/finetune_segmentation.py --encoder=runs/vader_r18 \
        --data_root=$VADER_SHARED_DATA/camvid --steps=2000 --output=results/ft_vader.json
"""

from absl import flags, logging

from vader_tf import cli
from vader_tf.data.segmentation import load_segmentation_split, segmentation_dataset
from vader_tf.eval.encoders import load_keras_encoder
from vader_tf.eval.finetune import build_segmentation_model, finetune_segmentation
from vader_tf.eval.reporting import script_flags, write_results
from vader_tf.eval.segmentation import score_segmentation

FLAGS = flags.FLAGS
flags.DEFINE_string("encoder", None, "Run dir, .keras file or random:<backbone>.")
flags.DEFINE_string("data_root", None, "Folder with <split>.txt files of 'image label' pairs.")
flags.DEFINE_string("output", None, "Path of the result JSON.")
flags.DEFINE_integer("num_classes", 11, "Number of classes (ids 0..num_classes-1).")
flags.DEFINE_integer("ignore_label", 11, "Label id excluded from the loss and from scoring.")
flags.DEFINE_string("split", "train", "Training split.")
flags.DEFINE_string("eval_split", "val", "Scored split.")
flags.DEFINE_integer("image_size", 224, "Short side after resizing (then cropped to x32).")
flags.DEFINE_integer("steps", 1000, "Optimisation steps.")
flags.DEFINE_integer("batch_size", 8, "Images per step.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
flags.DEFINE_integer("limit", None, "Use only the first N images of each split (smoke tests).")
flags.DEFINE_integer("seed", 0, "Seed of shuffling and of random encoders.")
flags.mark_flags_as_required(["encoder", "data_root", "output"])


def main(argv):
    del argv
    encoder = load_keras_encoder(FLAGS.encoder, seed=FLAGS.seed)
    model = build_segmentation_model(encoder, FLAGS.num_classes)
    train_images, train_labels = load_segmentation_split(
        FLAGS.data_root, FLAGS.split, FLAGS.image_size, limit=FLAGS.limit
    )
    history = finetune_segmentation(
        model,
        segmentation_dataset(train_images, train_labels),
        FLAGS.ignore_label,
        steps=FLAGS.steps,
        batch_size=min(FLAGS.batch_size, len(train_images)),
        learning_rate=FLAGS.learning_rate,
        seed=FLAGS.seed,
    )
    val_images, val_labels = load_segmentation_split(
        FLAGS.data_root, FLAGS.eval_split, FLAGS.image_size, limit=FLAGS.limit
    )
    metrics = score_segmentation(
        lambda images: model(images, training=False),
        val_images,
        val_labels,
        FLAGS.num_classes,
        FLAGS.ignore_label,
    )
    metrics["final_training_loss"] = history.history["loss"][-1]
    write_results(
        FLAGS.output, "finetune_segmentation", FLAGS.encoder, metrics, config=script_flags()
    )
    logging.info(
        "%s fine-tuned mIoU on %s: %.4f", FLAGS.encoder, FLAGS.eval_split, metrics["mean_iou"]
    )


if __name__ == "__main__":
    cli.run(main)
