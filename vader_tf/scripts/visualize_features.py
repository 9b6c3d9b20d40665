"""Saves pictures of an encoder's dense features for one image.

Writes `<output_dir>/<image name>_pca.png` (PCA of the features to RGB) and
`<output_dir>/<image name>_similarity.png` (cosine similarity to the feature at
`--point`), each next to the input image, plus `visualization.json` with the command.

    vader-visualize-features --encoder=runs/vader_r18 \
        --image=photo.jpg --point=120,200 --output_dir=results/vis
"""

import os

import numpy as np
from absl import flags, logging

from vader_tf import cli, storage
from vader_tf.data.segmentation import load_image, resize_and_crop_image
from vader_tf.eval import visualize
from vader_tf.eval.reporting import script_flags, write_results
from vader_tf.scripts import _eval_flags

FLAGS = flags.FLAGS
_eval_flags.define_encoder_flags()
flags.DEFINE_string("image", None, "Image file.")
flags.DEFINE_string("output_dir", None, "Folder for the PNGs.")
flags.DEFINE_integer("image_size", 320, "Short side after resizing (then cropped to x32).")
flags.DEFINE_list("point", None, "y,x in pixels of the resized image (default: its centre).")
flags.DEFINE_integer("seed", 0, "Seed of random encoders.")
flags.mark_flags_as_required(["encoder", "image", "output_dir"])


def main(argv):
    del argv
    storage.check_writable_dir(FLAGS.output_dir, "output_dir")
    image = resize_and_crop_image(load_image(FLAGS.image), FLAGS.image_size)
    extractor = _eval_flags.feature_extractor()
    features = extractor(image[None]).numpy()[0]
    point = [float(v) for v in FLAGS.point] if FLAGS.point else [s / 2 for s in image.shape[:2]]
    name = os.path.splitext(os.path.basename(FLAGS.image))[0]
    pictures = {
        "pca": visualize.pca_rgb(features),
        "similarity": visualize.similarity_rgb(visualize.similarity_map(features, point)),
    }
    image = image.round().astype(np.uint8)
    paths = {}
    for kind, picture in pictures.items():
        paths[kind] = os.path.join(FLAGS.output_dir, f"{name}_{kind}.png")
        side_by_side = np.concatenate([image, visualize.upsample_nearest(picture)], axis=1)
        visualize.save_png(paths[kind], side_by_side)
        logging.info("Wrote %s", paths[kind])
    write_results(
        os.path.join(FLAGS.output_dir, "visualization.json"),
        "visualization",
        FLAGS.encoder,
        {"files": paths, "point_yx": point},
        config=script_flags(),
    )


def run():
    """The `vader-visualize-features` command (console entry point)."""
    cli.run(main)


if __name__ == "__main__":
    run()
