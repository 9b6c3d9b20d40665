"""The DAVIS video object segmentation protocol with propagated labels.

Layout (DAVIS 2016/2017): `<root>/JPEGImages/<resolution>/<sequence>/<frame>.jpg` and
`<root>/Annotations/<resolution>/<sequence>/<frame>.png`, frames sorted by file name.
Masks are either binary (0 background, 255 object; DAVIS 2016) or object ids (palette
PNGs; DAVIS 2017). Only the first frame's mask is given to the method.

Protocol (`evaluate_sequence`, settings in `vader_tf.eval.protocols.DavisProtocol`):
frames are resized so their short side is `image_size`
(sides rounded to multiples of 4, so the stride-4 feature grid covers the frame exactly);
the first mask's one-hot is resized to the frame size (area averaging, as the frame was
resized) and pooled onto the feature grid (`vader_tf.ops.grid.pool_to_grid`), giving
per-cell label distributions; labels are propagated with
`vader_tf.eval.label_propagation.propagate_labels`; each prediction is upsampled
bilinearly to the frame (`vader_tf.ops.grid.upsample_to_pixels`), resized to the
annotation's resolution, and its arg-max is scored against the annotation. J (region
IoU) and F (boundary F-measure) are averaged over objects and over frames 1..end (the
first frame, which is given, is not scored; frames without an annotation file are
skipped). A dataset's J and F are the means of the per-sequence values.
"""

import os

import numpy as np
import tensorflow as tf
from absl import logging

from vader_tf import storage
from vader_tf.data.segmentation import load_image, load_label, resize_image
from vader_tf.eval import metrics
from vader_tf.eval.label_propagation import propagate_labels
from vader_tf.eval.protocols import DavisProtocol
from vader_tf.ops.grid import FEATURE_STRIDE, pool_to_grid, upsample_to_pixels

IMAGES_DIR = "JPEGImages"
ANNOTATIONS_DIR = "Annotations"


def list_sequences(root, resolution="480p"):
    """Sorted sequence names under `<root>/JPEGImages/<resolution>`."""
    images_dir = os.path.join(root, IMAGES_DIR, resolution)
    if not tf.io.gfile.isdir(images_dir):
        raise FileNotFoundError(f"{images_dir} not found: {root!r} is not in the DAVIS layout.")
    return sorted(
        name for name in storage.listdir(images_dir) if tf.io.gfile.isdir(os.path.join(images_dir, name))
    )


def sequence_files(root, sequence, resolution="480p"):
    """(frame paths, annotation paths or None per frame) of one sequence, in order."""
    images_dir = os.path.join(root, IMAGES_DIR, resolution, sequence)
    annotations_dir = os.path.join(root, ANNOTATIONS_DIR, resolution, sequence)
    if not tf.io.gfile.isdir(images_dir):
        raise FileNotFoundError(f"Sequence {sequence!r} not found: no {images_dir}.")
    frames = sorted(
        name for name in storage.listdir(images_dir) if name.lower().endswith((".jpg", ".jpeg", ".png"))
    )
    if not frames:
        raise ValueError(f"{images_dir} holds no frames.")
    frame_paths = [os.path.join(images_dir, name) for name in frames]
    annotation_paths = []
    for name in frames:
        path = os.path.join(annotations_dir, os.path.splitext(name)[0] + ".png")
        annotation_paths.append(path if storage.isfile(path) else None)
    if annotation_paths[0] is None:
        raise FileNotFoundError(
            f"First-frame annotation of {sequence!r} not found in {annotations_dir}."
        )
    return frame_paths, annotation_paths


def load_mask(path):
    """An annotation as object ids `[H, W]` (0 = background); 0/255 masks become 0/1."""
    mask = load_label(path).astype(np.int32)
    if set(np.unique(mask).tolist()) <= {0, 255}:
        mask = mask // 255
    return mask


def frame_size(height, width, short_side, multiple=FEATURE_STRIDE):
    """Size with short side `short_side` (aspect kept), sides rounded to `multiple`."""
    scale = short_side / min(height, width)
    return (
        max(multiple, round(height * scale / multiple) * multiple),
        max(multiple, round(width * scale / multiple) * multiple),
    )


def mask_to_cell_labels(mask, num_labels, frame_size):
    """Label distributions on the stride-4 feature grid of a frame of size `frame_size`,
    from an `[H, W]` id mask: its one-hot, area-resized to the frame, averaged over each
    cell's footprint (`pool_to_grid`)."""
    one_hot = tf.one_hot(mask, num_labels, dtype=tf.float32)
    one_hot = tf.image.resize(one_hot, frame_size, method="area").numpy()
    sums = pool_to_grid(one_hot, FEATURE_STRIDE)
    return (sums / np.maximum(sums.sum(axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def score_frame(cell_labels, annotation, object_ids, frame_size):
    """(J, F) of one frame, averaged over `object_ids`, for `[h, w, C]` predicted
    distributions on the feature grid of a frame of size `frame_size`, upsampled to the
    frame and resized to the annotation's size."""
    upsampled = upsample_to_pixels(cell_labels[None], frame_size)[0]
    upsampled = tf.image.resize(upsampled, annotation.shape, method="bilinear")
    prediction = tf.argmax(upsampled, axis=-1, output_type=tf.int32).numpy()
    j_values = [metrics.region_similarity(prediction == i, annotation == i) for i in object_ids]
    f_values = [metrics.boundary_f_measure(prediction == i, annotation == i) for i in object_ids]
    return float(np.mean(j_values)), float(np.mean(f_values))


def evaluate_sequence(
    extractor, frame_paths, annotation_paths, protocol=DavisProtocol(), max_frames=None
):
    """J and F of label propagation on one sequence.

    Args:
        extractor: a `FeatureExtractor` (frozen).
        frame_paths, annotation_paths: as returned by `sequence_files`.
        protocol: a `DavisProtocol` (frame short side and propagation settings).
        max_frames: optional number of leading frames to use.

    Returns:
        dict with `J`, `F` (means over scored frames), `J_per_frame`, `F_per_frame`,
        `num_frames` (frames propagated through) and `num_objects`.
    """
    frame_paths = frame_paths[:max_frames]
    annotation_paths = annotation_paths[: len(frame_paths)]
    first_mask = load_mask(annotation_paths[0])
    object_ids = [int(i) for i in np.unique(first_mask) if i != 0]
    size = frame_size(*first_mask.shape, protocol.image_size)

    def features():
        for path in frame_paths:
            image = resize_image(load_image(path), size)
            yield extractor(image[None])[0].numpy()

    first_labels = mask_to_cell_labels(first_mask, max(object_ids, default=0) + 1, size)
    j_per_frame, f_per_frame = [], []
    predictions = propagate_labels(
        features(),
        first_labels,
        context_frames=protocol.context_frames,
        topk=protocol.topk,
        temperature=protocol.temperature,
        radius=protocol.search_radius,
    )
    for cell_labels, annotation_path in zip(predictions, annotation_paths[1:]):
        if annotation_path is None:
            continue
        j, f = score_frame(cell_labels, load_mask(annotation_path), object_ids, size)
        j_per_frame.append(j)
        f_per_frame.append(f)
    return {
        "J": float(np.mean(j_per_frame)) if j_per_frame else float("nan"),
        "F": float(np.mean(f_per_frame)) if f_per_frame else float("nan"),
        "J_per_frame": j_per_frame,
        "F_per_frame": f_per_frame,
        "num_frames": len(frame_paths),
        "num_objects": len(object_ids),
    }


def evaluate_davis(
    extractor, root, protocol=DavisProtocol(), sequences=None, resolution="480p", max_frames=None
):
    """Label propagation on DAVIS sequences.

    Args:
        extractor: a `FeatureExtractor`.
        root: DAVIS root folder.
        protocol: a `DavisProtocol`.
        sequences: names to evaluate (default: all in the folder).
        resolution: resolution folder name ("480p").
        max_frames: see `evaluate_sequence`.

    Returns:
        dict with `J_mean`, `F_mean`, `JF_mean` (means over sequences) and `sequences`
        (per-sequence results of `evaluate_sequence`).
    """
    sequences = sequences or list_sequences(root, resolution)
    results = {}
    for sequence in sequences:
        frame_paths, annotation_paths = sequence_files(root, sequence, resolution)
        results[sequence] = evaluate_sequence(
            extractor, frame_paths, annotation_paths, protocol, max_frames
        )
        logging.info(
            "DAVIS %s: J %.4f F %.4f", sequence, results[sequence]["J"], results[sequence]["F"]
        )
    j_mean = float(np.mean([result["J"] for result in results.values()]))
    f_mean = float(np.mean([result["F"] for result in results.values()]))
    return {
        "J_mean": j_mean,
        "F_mean": f_mean,
        "JF_mean": (j_mean + f_mean) / 2,
        "sequences": results,
    }
