"""DAVIS video object segmentation by label propagation with frozen dense features.

Given each sequence's first-frame mask, propagates it by k-nearest-neighbour matching
of features (see `vader_tf.eval.davis` for the protocol) and reports J and F. Every field
of `vader_tf.eval.protocols.DavisProtocol` is a flag of the same name.

    vader-eval-davis --encoder=runs/vader_r18 \
        --davis_root=$VADER_SHARED_DATA/davis2016 --output=results/davis_vader.json
"""

from absl import flags, logging

from vader_tf import cli
from vader_tf.config_flags import define_flags
from vader_tf.eval.davis import evaluate_davis
from vader_tf.eval.protocols import DavisProtocol
from vader_tf.scripts import _eval_flags

FLAGS = flags.FLAGS
_eval_flags.define_encoder_flags()
flags.DEFINE_string("davis_root", None, "Folder in the DAVIS layout (JPEGImages/, Annotations/).")
_eval_flags.define_output_flag()
flags.DEFINE_list("sequences", None, "Sequences to evaluate (default: all in the folder).")
flags.DEFINE_string("resolution", "480p", "Resolution sub-folder.")
flags.DEFINE_integer("max_frames", None, "Use only the first N frames of each sequence.")
flags.DEFINE_integer("seed", 0, "Seed of random encoders.")
flags.mark_flags_as_required(["encoder", "davis_root", "output"])
define_flags(DavisProtocol)


def main(argv):
    del argv
    protocol = _eval_flags.checked_protocol(DavisProtocol)
    extractor = _eval_flags.feature_extractor()
    metrics = evaluate_davis(
        extractor,
        FLAGS.davis_root,
        protocol,
        sequences=FLAGS.sequences,
        resolution=FLAGS.resolution,
        max_frames=FLAGS.max_frames,
    )
    _eval_flags.write_result("davis_label_propagation", metrics, protocol)
    logging.info("%s DAVIS J&F %.4f", FLAGS.encoder, metrics["JF_mean"])


def run():
    """The `vader-eval-davis` command (console entry point)."""
    cli.run(main)


if __name__ == "__main__":
    run()
