"""Reading image/label folders for evaluation, and resizing them to encoder-friendly sizes.

Layout: a root folder holds `<split>.txt` files (e.g. `train.txt`, `val.txt`) with one
`image_path label_path` pair per line, both relative to the root (CamVid as distributed
with SegNet uses this layout). Labels are single-channel PNGs of class ids; their values
are returned unchanged (the ignore label is the caller's business).

Evaluation sizes: `evaluation_size` scales an image so its short side is `short_side`
(keeping the aspect ratio) and then rounds each side down to a multiple (32 by default,
the encoder's input multiple); `resize_pair` resizes an image bilinearly to that scale
and centre-crops the excess, and resizes the label with nearest-neighbour.
"""

import os

import numpy as np
import tensorflow as tf

from vader_tf import storage
from vader_tf.models.encoder import INPUT_MULTIPLE


def read_split(root, split):
    """The `(image_path, label_path)` pairs of `<root>/<split>.txt`, as absolute paths.

    Raises:
        FileNotFoundError: naming the missing root, split list or first missing file.
        ValueError: naming the file and line of a line that is not a pair.
    """
    if not tf.io.gfile.isdir(root):
        raise FileNotFoundError(f"Data root {root}: no such directory.")
    list_path = os.path.join(root, f"{split}.txt")
    if not storage.isfile(list_path):
        listing = storage.listdir(root)
        available = sorted(name[: -len(".txt")] for name in listing if name.endswith(".txt"))
        raise FileNotFoundError(
            f"Split {split!r} not found: no {list_path}. Available splits: {available}."
        )
    pairs = []
    with tf.io.gfile.GFile(list_path) as f:
        for line_number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise ValueError(
                    f"{list_path}:{line_number}: expected 'image_path label_path', got {line!r}."
                )
            pair = tuple(os.path.join(root, field) for field in fields)
            for path in pair:
                if not storage.isfile(path):
                    raise FileNotFoundError(
                        f"{path} (listed in {list_path}:{line_number}) not found."
                    )
            pairs.append(pair)
    if not pairs:
        raise ValueError(f"{list_path} lists no image/label pairs.")
    return pairs


def load_image(path):
    """An RGB image file as uint8 `[H, W, 3]`."""
    with storage.open_image(path) as image:
        return np.asarray(image.convert("RGB"))


def load_label(path):
    """A single-channel label PNG as an integer `[H, W]` array (palette PNGs give their
    indices; for RGB files the first channel is used)."""
    with storage.open_image(path) as image:
        label = np.asarray(image)
    return label[..., 0] if label.ndim == 3 else label


def evaluation_size(height, width, short_side, multiple=INPUT_MULTIPLE):
    """(scaled height, scaled width, crop height, crop width) for `resize_pair`."""
    scale = short_side / min(height, width)
    scaled_height = max(multiple, round(height * scale))
    scaled_width = max(multiple, round(width * scale))
    return (
        scaled_height,
        scaled_width,
        scaled_height // multiple * multiple,
        scaled_width // multiple * multiple,
    )


def resize_image(image, size):
    """Bilinear resize of a `[H, W, C]` image to `size = (height, width)`, float32."""
    resized = tf.image.resize(tf.convert_to_tensor(image, tf.float32), size, method="bilinear")
    return resized.numpy()


def resize_label(label, size):
    """Nearest-neighbour resize of an `[H, W]` integer label map."""
    resized = tf.image.resize(
        tf.convert_to_tensor(label)[..., None], size, method="nearest"
    )
    return resized.numpy()[..., 0].astype(label.dtype)


def _center_crop(array, height, width):
    top = (array.shape[0] - height) // 2
    left = (array.shape[1] - width) // 2
    return array[top : top + height, left : left + width]


def resize_and_crop_image(image, short_side, multiple=INPUT_MULTIPLE):
    """Bilinear resize to short side `short_side`, then centre crop to multiples of
    `multiple`; float32 `[h, w, 3]` in [0, 255]."""
    scaled_h, scaled_w, crop_h, crop_w = evaluation_size(*image.shape[:2], short_side, multiple)
    return _center_crop(resize_image(image, (scaled_h, scaled_w)), crop_h, crop_w)


def resize_pair(image, label, short_side, multiple=INPUT_MULTIPLE):
    """Resizes an image (bilinear) and its label (nearest) so the short side is
    `short_side`, then centre-crops both to multiples of `multiple`.

    Returns:
        float32 `[h, w, 3]` image in [0, 255] and a label `[h, w]` of the input dtype.
    """
    scaled_h, scaled_w, crop_h, crop_w = evaluation_size(*label.shape[:2], short_side, multiple)
    label = _center_crop(resize_label(label, (scaled_h, scaled_w)), crop_h, crop_w)
    return resize_and_crop_image(image, short_side, multiple), label


def load_segmentation_split(root, split, short_side, limit=None, multiple=INPUT_MULTIPLE):
    """Loads a split into memory at evaluation size.

    Images of a split may differ in size; they are all resized with `resize_pair`, and
    stacked only if their sizes agree.

    Args:
        root: dataset root holding `<split>.txt`.
        split: split name, e.g. "train".
        short_side: short side after resizing, before cropping to `multiple`.
        limit: optional number of leading pairs to load.

    Returns:
        (images, labels): uint8 `[N, h, w, 3]` and `[N, h, w]` arrays if all sizes agree,
        else lists of per-image arrays.
    """
    pairs = read_split(root, split)[:limit]
    images, labels = [], []
    for image_path, label_path in pairs:
        image, label = resize_pair(
            load_image(image_path), load_label(label_path), short_side, multiple
        )
        images.append(np.clip(np.round(image), 0, 255).astype(np.uint8))
        labels.append(label)
    if len({label.shape for label in labels}) == 1:
        return np.stack(images), np.stack(labels)
    return images, labels


def segmentation_dataset(images, labels):
    """A `tf.data.Dataset` of `(image float32 [h, w, 3], label int32 [h, w])` examples
    from arrays returned by `load_segmentation_split`."""
    return tf.data.Dataset.from_tensor_slices(
        (np.asarray(images, np.float32), np.asarray(labels, np.int32))
    )
