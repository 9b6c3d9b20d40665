"""Geometric correspondence (PCK) of frozen dense features under known warps of photos.

Warps each photo of `--image_dir` by random crops/scales/flips and homographies, matches
features by nearest neighbour and reports PCK at `--thresholds` pixels; see
`vader_tf.eval.correspondence` for the protocol. Every field of
`vader_tf.eval.protocols.CorrespondenceProtocol` is a flag of the same name.

    vader-eval-correspondence --encoder=runs/vader_r18 \
        --image_dir=$VADER_SHARED_DATA/bsds500/images/val --output=results/corr_vader.json
"""

from absl import flags, logging

from vader_tf import cli
from vader_tf.config_flags import define_flags
from vader_tf.eval.correspondence import evaluate_correspondence, load_images
from vader_tf.eval.protocols import CorrespondenceProtocol
from vader_tf.scripts import _eval_flags

FLAGS = flags.FLAGS
_eval_flags.define_encoder_flags()
flags.DEFINE_string("image_dir", None, "Folder of photos (searched recursively).")
_eval_flags.define_output_flag()
flags.DEFINE_integer("num_images", 100, "Use the first N photos (sorted by path).")
flags.DEFINE_integer("seed", 0, "Seed of the warps and of random encoders.")
flags.mark_flags_as_required(["encoder", "image_dir", "output"])
define_flags(CorrespondenceProtocol)


def main(argv):
    del argv
    protocol = _eval_flags.checked_protocol(CorrespondenceProtocol)
    extractor = _eval_flags.feature_extractor()
    images = load_images(FLAGS.image_dir, protocol.image_size, limit=FLAGS.num_images)
    metrics = evaluate_correspondence(extractor, images, protocol, seed=FLAGS.seed)
    _eval_flags.write_result("correspondence", metrics, protocol)
    logging.info("%s correspondence: %s", FLAGS.encoder, metrics["all"])


def run():
    """The `vader-eval-correspondence` command (console entry point)."""
    cli.run(main)


if __name__ == "__main__":
    run()
