"""Small sets of real images for verifying, warming up and calibrating exported models.

By default the photos bundled with scikit-image (no download) are used; a folder of
images can be given instead. A folder is read like `--data=folder:` of pretraining
(`vader_tf.data.sources.folder_source`): recursively, with unreadable files skipped,
named in a warning and counted. If neither is available, deterministic random images
are returned, and the caller is told so through the returned source name.
"""

import importlib.resources

import numpy as np
from absl import logging
from PIL import Image

from vader_tf import storage
from vader_tf.data import sources

# RGB photographs shipped in scikit-image's data directory.
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "retina.jpg",
    "color.png",
)

# Fractions of the free space left of / above the crop window: centre first, then the
# two ends, so that requesting more images than photos yields other views of them.
_CROP_POSITIONS = (0.5, 0.0, 1.0)


def _skimage_photo_paths():
    try:
        data_dir = importlib.resources.files("skimage") / "data"
    except ModuleNotFoundError:
        return []
    return [str(data_dir / name) for name in SKIMAGE_PHOTOS if (data_dir / name).is_file()]


def _folder_photos(folder, count):
    """Up to `count` decodable images below `folder` as RGB PIL images, in path order."""
    source = sources.folder_source(folder)
    with source.no_usable_images_reraised():
        arrays = [element["image"] for element in source.dataset().take(count).as_numpy_iterator()]
    if source.skipped.count:
        logging.warning(
            "Skipped %d unreadable file(s) in %s: %s",
            source.skipped.count, folder, ", ".join(sorted(source.skipped.files)),
        )
    return [Image.fromarray(array) for array in arrays]


def _crop_resize(image, height, width, position):
    """Crops `image` to the aspect ratio height:width at `position`, then resizes."""
    image_width, image_height = image.size
    scale = min(image_width / width, image_height / height)
    crop_width, crop_height = round(width * scale), round(height * scale)
    left = round((image_width - crop_width) * position)
    top = round((image_height - crop_height) * position)
    crop = image.crop((left, top, left + crop_width, top + crop_height))
    return np.asarray(crop.resize((width, height), Image.BILINEAR), dtype=np.uint8)


def load_images(photos, count, height, width, start=0):
    """`count` uint8 RGB images `[count, height, width, 3]` cropped from `photos`.

    Image `i` is view `i // len(photos)` of photo `i % len(photos)`: crops at the centre,
    top-left and bottom-right, then horizontally flipped copies of those (6 distinct
    views per photo). Indices run from `start`, so disjoint ranges give disjoint sets
    (e.g. calibration and evaluation images) as long as they stay below 6 * len(photos).

    Args:
        photos: RGB PIL images.
    """
    opened = list(photos)
    images = []
    for index in range(start, start + count):
        image = opened[index % len(opened)]
        view = index // len(opened)
        crop = _crop_resize(image, height, width, _CROP_POSITIONS[view % len(_CROP_POSITIONS)])
        if (view // len(_CROP_POSITIONS)) % 2:
            crop = crop[:, ::-1]
        images.append(crop)
    return np.stack(images)


def random_images(count, height, width, seed=0):
    """Deterministic uniform-noise uint8 images `[count, height, width, 3]`."""
    return np.random.default_rng(seed).integers(
        0, 256, size=(count, height, width, 3), dtype=np.uint8
    )


def sample_images(count, height, width=None, folder=None, start=0):
    """A batch of real images for checking or calibrating an exported model.

    Args:
        count: number of images.
        height: output height.
        width: output width (defaults to `height`).
        folder: optional folder of images (read recursively; unreadable files are
            skipped and named) to use instead of the bundled photos.
        start: index of the first image (see `load_images`).

    Returns:
        `(images, source)`: uint8 `[count, height, width, 3]` RGB images and a short
        description of where they came from ("skimage", the folder, or "random").
    """
    width = width or height
    if folder:
        photos = _folder_photos(folder, start + count)
        return load_images(photos, count, height, width, start), folder
    paths = _skimage_photo_paths()
    if paths:
        photos = [storage.open_image(path).convert("RGB") for path in paths]
        return load_images(photos, count, height, width, start), "skimage"
    logging.warning("scikit-image sample photos not found; using random images.")
    return random_images(count, height, width), "random"
