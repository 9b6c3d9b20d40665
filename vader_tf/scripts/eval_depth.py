"""Linear depth probe on frozen dense features (NYU-v2 metrics).

Data come from `--data_root` (a folder with `<split>.txt` lists of `image depth` pairs,
depth as 16-bit PNG in millimetres, 0 = invalid) or, with `--dataset=nyu_depth_v2`, from
a locally prepared TFDS `nyu_depth_v2` in `--tfds_data_dir` (never downloaded). See
`vader_tf.eval.depth` for the protocol. Every field of `vader_tf.eval.protocols.DepthProtocol`
is a flag of the same name.

    vader-eval-depth --encoder=runs/vader_r18 --dataset=nyu_depth_v2 \
        --tfds_data_dir=~/tensorflow_datasets --output=results/depth_vader.json
"""

from absl import app, flags, logging

from vader_tf import cli
from vader_tf.config_flags import define_flags
from vader_tf.data.segmentation import load_segmentation_split
from vader_tf.eval import depth
from vader_tf.eval.protocols import DepthProtocol
from vader_tf.scripts import _eval_flags

FLAGS = flags.FLAGS
_eval_flags.define_encoder_flags()
flags.DEFINE_enum("dataset", "folder", ["folder", "nyu_depth_v2"], "Where the data come from.")
flags.DEFINE_string("data_root", None, "With --dataset=folder: folder with <split>.txt files.")
flags.DEFINE_string("tfds_data_dir", None, "With --dataset=nyu_depth_v2: TFDS data dir.")
_eval_flags.define_output_flag()
_eval_flags.define_split_flags(
    eval_split=None,
    eval_split_help="Split scored (default: val, or validation for TFDS).",
    limit_help="Use only the first N images of each split.",
)
flags.DEFINE_integer("seed", 0, "Seed of sampling, probe initialisation and random encoders.")
flags.mark_flags_as_required(["encoder", "output"])
define_flags(DepthProtocol)


def load_split(split, image_size):
    if FLAGS.dataset == "nyu_depth_v2":
        return depth.load_nyu_depth_v2(split, image_size, FLAGS.limit, FLAGS.tfds_data_dir)
    if FLAGS.data_root is None:
        raise app.UsageError("--data_root is required with --dataset=folder.")
    images, depth_maps = load_segmentation_split(
        FLAGS.data_root, split, image_size, limit=FLAGS.limit
    )
    return images, depth.depths_in_metres(depth_maps)


def main(argv):
    del argv
    protocol = _eval_flags.checked_protocol(DepthProtocol)
    eval_split = FLAGS.eval_split or ("validation" if FLAGS.dataset == "nyu_depth_v2" else "val")
    train_images, train_depths = load_split(FLAGS.split, protocol.image_size)
    val_images, val_depths = load_split(eval_split, protocol.image_size)
    extractor = _eval_flags.feature_extractor()
    metrics = depth.run_depth_probe(
        extractor,
        train_images,
        train_depths,
        val_images,
        val_depths,
        protocol,
        seed=FLAGS.seed,
    )
    _eval_flags.write_result("depth_probe", metrics, protocol)
    logging.info("%s depth: %s", FLAGS.encoder, metrics)


def run():
    """The `vader-eval-depth` command (console entry point)."""
    cli.run(main)


if __name__ == "__main__":
    run()
