"""Small sets of real images for verifying, warming up and calibrating exported models.

By default the photos bundled with scikit-image (no download) are used; a folder of
images can be given instead. If neither is available, deterministic random images are
returned, and the caller is told so through the returned source name.
"""

import importlib.resources
import os

import numpy as np
from absl import logging
from PIL import Image

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

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

# Fractions of the free space left of / above the crop window: centre first, then the
# two ends, so that requesting more images than photos yields other views of them.
_CROP_POSITIONS = (0.5, 0.0, 1.0)


def _skimage_photo_paths():
    try:
        data_dir = importlib.resources.files("skimage") / "data"
    except ModuleNotFoundError:
        return []
    return [str(data_dir / name) for name in SKIMAGE_PHOTOS if (data_dir / name).is_file()]


def _folder_image_paths(folder):
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Image folder {folder!r} does not exist.")
    paths = sorted(
        os.path.join(folder, name)
        for name in os.listdir(folder)
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not paths:
        raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found in {folder!r}.")
    return paths


def _crop_resize(image, height, width, position):
    """Crops `image` to the aspect ratio height:width at `position`, then resizes."""
    image_width, image_height = image.size
    scale = min(image_width / width, image_height / height)
    crop_width, crop_height = round(width * scale), round(height * scale)
    left = round((image_width - crop_width) * position)
    top = round((image_height - crop_height) * position)
    crop = image.crop((left, top, left + crop_width, top + crop_height))
    return np.asarray(crop.resize((width, height), Image.BILINEAR), dtype=np.uint8)


def load_images(paths, count, height, width, start=0):
    """`count` uint8 RGB images `[count, height, width, 3]` cropped from the files.

    Image `i` is view `i // len(paths)` of file `i % len(paths)`: crops at the centre,
    top-left and bottom-right, then horizontally flipped copies of those (6 distinct
    views per file). Indices run from `start`, so disjoint ranges give disjoint sets
    (e.g. calibration and evaluation images) as long as they stay below 6 * len(paths).
    """
    opened = [Image.open(path).convert("RGB") for path in paths]
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
        folder: optional folder of images to use instead of the bundled photos.
        start: index of the first image (see `load_images`).

    Returns:
        `(images, source)`: uint8 `[count, height, width, 3]` RGB images and a short
        description of where they came from ("skimage", the folder, or "random").
    """
    width = width or height
    if folder:
        return load_images(_folder_image_paths(folder), count, height, width, start), folder
    paths = _skimage_photo_paths()
    if paths:
        return load_images(paths, count, height, width, start), "skimage"
    logging.warning("scikit-image sample photos not found; using random images.")
    return random_images(count, height, width), "random"
