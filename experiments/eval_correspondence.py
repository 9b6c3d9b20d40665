"""Geometric correspondence (PCK) of frozen dense features under known warps of photos.

Warps each photo of `--image_dir` by random crops/scales/flips and homographies, matches
features by nearest neighbour and reports PCK at `--thresholds` pixels; see
`vader_tf.eval.correspondence` for the protocol.

    python experiments/eval_correspondence.py --encoder=runs/vader_r18 \
        --image_dir=$VADER_SHARED_DATA/bsds500/images/val --output=results/corr_vader.json
"""

from absl import flags, logging

from vader_tf import cli
from vader_tf.data.segmentation import load_image, resize_and_crop_image
from vader_tf.eval.correspondence import evaluate_correspondence, list_images
from vader_tf.eval.encoders import FEATURES_LAYER, LAYERS, load_feature_extractor
from vader_tf.eval.reporting import script_flags, write_results

FLAGS = flags.FLAGS
flags.DEFINE_string("encoder", None, "Run dir, .keras file, SavedModel dir or random:<backbone>.")
flags.DEFINE_enum(
    "layer", FEATURES_LAYER, LAYERS, "Encoder output to evaluate: features, decoder or P2..P5."
)
flags.DEFINE_string("image_dir", None, "Folder of photos (searched recursively).")
flags.DEFINE_string("output", None, "Path of the result JSON.")
flags.DEFINE_integer("num_images", 100, "Use the first N photos (sorted by path).")
flags.DEFINE_integer("image_size", 256, "Short side after resizing (then cropped to x32).")
flags.DEFINE_integer("warps_per_image", 1, "Warps of each kind (crop_flip, homography) per photo.")
flags.DEFINE_list("thresholds", ["4", "8", "16", "32"], "PCK distances in pixels.")
flags.DEFINE_float("min_scale", 0.6, "Smallest crop side relative to the photo.")
flags.DEFINE_float("perspective", 0.15, "Max corner shift of homographies, relative to the crop.")
flags.DEFINE_integer("point_stride", 2, "Score every n-th source feature cell in each direction.")
flags.DEFINE_integer("seed", 0, "Seed of the warps and of random encoders.")
flags.mark_flags_as_required(["encoder", "image_dir", "output"])


def main(argv):
    del argv
    extractor = load_feature_extractor(FLAGS.encoder, seed=FLAGS.seed, layer=FLAGS.layer)
    paths = list_images(FLAGS.image_dir, limit=FLAGS.num_images)
    images = (resize_and_crop_image(load_image(path), FLAGS.image_size) for path in paths)
    metrics = evaluate_correspondence(
        extractor,
        images,
        thresholds=[float(k) for k in FLAGS.thresholds],
        warps_per_image=FLAGS.warps_per_image,
        scale_range=(FLAGS.min_scale, 1.0),
        perspective=FLAGS.perspective,
        point_stride=FLAGS.point_stride,
        seed=FLAGS.seed,
    )
    write_results(FLAGS.output, "correspondence", FLAGS.encoder, metrics, config=script_flags())
    logging.info("%s correspondence: %s", FLAGS.encoder, metrics["all"])


if __name__ == "__main__":
    cli.run(main)
