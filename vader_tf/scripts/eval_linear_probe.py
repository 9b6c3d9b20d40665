"""Linear-probe semantic segmentation on frozen dense features (e.g. CamVid).

Trains a 1x1 linear classifier on frozen stride-4 features of `--split` and reports
mIoU on `--eval_split`; see `vader_tf.eval.linear_probe` for the protocol. Every field of
`vader_tf.eval.protocols.CamVidProbeProtocol` is a flag of the same name.

    vader-eval-linear-probe --encoder=runs/vader_r18 \
        --data_root=$VADER_SHARED_DATA/camvid --num_classes=11 --ignore_label=11 \
        --output=results/probe_vader.json
"""

from absl import flags, logging

from vader_tf import cli
from vader_tf.config_flags import define_flags
from vader_tf.data.segmentation import load_segmentation_split
from vader_tf.eval.linear_probe import run_linear_probe
from vader_tf.eval.protocols import CamVidProbeProtocol
from vader_tf.scripts import _eval_flags

FLAGS = flags.FLAGS
_eval_flags.define_encoder_flags()
flags.DEFINE_string("data_root", None, "Folder with <split>.txt files of 'image label' pairs.")
_eval_flags.define_output_flag()
_eval_flags.define_split_flags()
flags.DEFINE_integer("seed", 0, "Seed of sampling, probe initialisation and random encoders.")
flags.mark_flags_as_required(["encoder", "data_root", "output"])
define_flags(CamVidProbeProtocol)


def main(argv):
    del argv
    protocol = _eval_flags.checked_protocol(CamVidProbeProtocol)
    extractor = _eval_flags.feature_extractor()
    train_images, train_labels = load_segmentation_split(
        FLAGS.data_root, FLAGS.split, protocol.image_size, limit=FLAGS.limit
    )
    val_images, val_labels = load_segmentation_split(
        FLAGS.data_root, FLAGS.eval_split, protocol.image_size, limit=FLAGS.limit
    )
    metrics = run_linear_probe(
        extractor,
        train_images,
        train_labels,
        val_images,
        val_labels,
        protocol,
        seed=FLAGS.seed,
    )
    _eval_flags.write_result("linear_probe", metrics, protocol)
    logging.info("%s mIoU on %s: %.4f", FLAGS.encoder, FLAGS.eval_split, metrics["mean_iou"])


def run():
    """The `vader-eval-linear-probe` command (console entry point)."""
    cli.run(main)


if __name__ == "__main__":
    run()
