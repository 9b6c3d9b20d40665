"""Linear-probe semantic segmentation on frozen dense features (e.g. CamVid).

Trains a 1x1 linear classifier on frozen stride-4 features of `--split` and reports
mIoU on `--eval_split`; see `vader_tf.eval.linear_probe` for the protocol.

    python experiments/eval_linear_probe.py --encoder=runs/vader_r18 \
        --data_root=$VADER_SHARED_DATA/camvid --num_classes=11 --ignore_label=11 \
        --output=results/probe_vader.json
"""

from absl import flags, logging

from vader_tf import cli
from vader_tf.data.segmentation import load_segmentation_split
from vader_tf.eval.encoders import FEATURES_LAYER, LAYERS, load_feature_extractor
from vader_tf.eval.linear_probe import run_linear_probe
from vader_tf.eval.reporting import script_flags, write_results

FLAGS = flags.FLAGS
flags.DEFINE_string("encoder", None, "Run dir, .keras file, SavedModel dir or random:<backbone>.")
flags.DEFINE_enum(
    "layer", FEATURES_LAYER, LAYERS, "Encoder output to evaluate: features, decoder or P2..P5."
)
flags.DEFINE_string("data_root", None, "Folder with <split>.txt files of 'image label' pairs.")
flags.DEFINE_string("output", None, "Path of the result JSON.")
flags.DEFINE_integer("num_classes", 11, "Number of classes (ids 0..num_classes-1).")
flags.DEFINE_integer("ignore_label", 11, "Label id excluded from training and scoring.")
flags.DEFINE_string("split", "train", "Split the probe is trained on.")
flags.DEFINE_string("eval_split", "val", "Split the probe is scored on.")
flags.DEFINE_integer("image_size", 224, "Short side after resizing (then cropped to x32).")
flags.DEFINE_integer("steps", 2000, "Optimisation steps of the probe.")
flags.DEFINE_integer("batch_size", 4096, "Feature cells per step.")
flags.DEFINE_float("learning_rate", 1e-2, "Adam learning rate.")
flags.DEFINE_integer(
    "pixels_per_image", 1000, "Labelled cells sampled per training image (0 = all)."
)
flags.DEFINE_integer("limit", None, "Use only the first N images of each split (smoke tests).")
flags.DEFINE_integer("seed", 0, "Seed of sampling, probe initialisation and random encoders.")
flags.mark_flags_as_required(["encoder", "data_root", "output"])


def main(argv):
    del argv
    extractor = load_feature_extractor(FLAGS.encoder, seed=FLAGS.seed, layer=FLAGS.layer)
    train_images, train_labels = load_segmentation_split(
        FLAGS.data_root, FLAGS.split, FLAGS.image_size, limit=FLAGS.limit
    )
    val_images, val_labels = load_segmentation_split(
        FLAGS.data_root, FLAGS.eval_split, FLAGS.image_size, limit=FLAGS.limit
    )
    metrics = run_linear_probe(
        extractor,
        train_images,
        train_labels,
        val_images,
        val_labels,
        num_classes=FLAGS.num_classes,
        ignore_label=FLAGS.ignore_label,
        steps=FLAGS.steps,
        pixels_per_image=FLAGS.pixels_per_image,
        batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate,
        seed=FLAGS.seed,
    )
    write_results(FLAGS.output, "linear_probe", FLAGS.encoder, metrics, config=script_flags())
    logging.info("%s mIoU on %s: %.4f", FLAGS.encoder, FLAGS.eval_split, metrics["mean_iou"])


if __name__ == "__main__":
    cli.run(main)
