"""Pictures of the features in TensorBoard while a run trains.

Every `image_summary_every` steps (`PretrainConfig`; by default at each checkpoint, 0 =
off) the chief writes, for 2 fixed photos of the run's own data (the first two of the
source, centre-cropped to the training view size):

- `pictures/photo`: the photo;
- `pictures/features_pca`: the served features (`SERVED_REPRESENTATION`) projected on their
  first 3 principal components (fitted on both photos' pixels together) and mapped to
  RGB, so the same colour means the same feature across the two photos;
- `pictures/similarity`: the cosine similarity of every pixel's feature to the feature
  at one fixed point (the centre of the first photo, marked in both pictures by a
  small box), in grey levels from -1 (black) to 1 (white);
- histograms `similarity/positive` and `similarity/negative` of the last training step
  before the write: the positive similarities of up to 256 of its InfoNCE rows (query .
  its positive key) and the similarities of up to 16 of its rows to up to 64 entries
  of the queue the step contrasted them with (`vader_tf.training.last_step`: a
  fixed-size sample of what the loss computed, evenly spaced, rows that count only;
  the rows of the chief's first replica under several replicas). For a method of several terms (DenseCL)
  each term has its own pair, prefixed by its name: `similarity/global_positive`, ...
  They are of the training embedding (what the loss compares), the pictures of the
  served features.

The pictures run in inference mode on the chief's own copy of the networks, read no
random state and change no variable; the sample is held in variables outside the
model's checkpoint and weights, which no computation of the step depends on. So the
training stream, the checkpoints and bitwise resume are the same with and without
pictures (tested).
"""

import keras
import numpy as np
import tensorflow as tf

from vader_tf.export.sample_images import load_images
from vader_tf.training.last_step import LastStepSample
from vader_tf.serving_contract import SERVED_REPRESENTATION

NUM_PHOTOS = 2


def served_model(encoder):
    """`encoder` returning the served features (`SERVED_REPRESENTATION`, the one place
    that says what the pictures show)."""
    return keras.Model(
        encoder.input, encoder.representations[SERVED_REPRESENTATION], name="summary_probe"
    )


def pca_rgb(features):
    """`[N, h, w, D]` features -> `[N, h, w, 3]` uint8: each pixel's coordinates on the
    first 3 principal components of all pixels, each component stretched from its 1st
    to 99th percentile onto 0..255 (sign fixed so the largest loading is positive).

    TensorFlow ops (an eigendecomposition of the D x D covariance), so it compiles into
    the same graph as the forward pass. Non-finite values (a float16 forward pass can
    overflow in inference mode early in a run) count as 0: the picture shows the rest,
    instead of the eigendecomposition failing and stopping the training run.
    """
    features = tf.convert_to_tensor(features, tf.float32)
    features = tf.where(tf.math.is_finite(features), features, tf.zeros_like(features))
    shape = tf.shape(features)
    flat = tf.reshape(features, [-1, shape[-1]])
    centred = flat - tf.reduce_mean(flat, axis=0)
    _, vectors = tf.linalg.eigh(tf.matmul(centred, centred, transpose_a=True))
    components = tf.reverse(vectors, axis=[1])[:, :3]  # Largest eigenvalues first.
    largest = tf.gather(
        components, tf.argmax(tf.abs(components), axis=0, output_type=tf.int32), axis=0
    )
    signs = tf.sign(tf.linalg.diag_part(largest))
    projected = tf.matmul(centred, components * signs)
    projected = tf.pad(projected, [[0, 0], [0, 3 - tf.shape(projected)[1]]])
    ordered = tf.sort(projected, axis=0)
    count = tf.cast(tf.shape(ordered)[0] - 1, tf.float32)
    low = ordered[tf.cast(tf.round(0.01 * count), tf.int32)]
    high = ordered[tf.cast(tf.round(0.99 * count), tf.int32)]
    scaled = tf.clip_by_value((projected - low) / tf.maximum(high - low, 1e-12), 0.0, 1.0)
    rgb = tf.cast(tf.round(scaled * 255.0), tf.uint8)
    return tf.reshape(rgb, tf.concat([shape[:-1], [3]], axis=0))


def similarity_map(features, point):
    """Cosine similarity of every pixel of `[N, h, w, D]` features to the feature of
    the first image at `point` (row, column), as uint8 grey `[N, h, w, 3]` (-1 black,
    1 white), the point (white) marked by a black 3 x 3 box around it."""
    unit = _unit(tf.convert_to_tensor(features, tf.float32))
    row, column = point
    similarity = tf.einsum("nhwd,d->nhw", unit, unit[0, row, column])
    grey = tf.cast(tf.round(tf.clip_by_value((similarity + 1.0) / 2.0, 0.0, 1.0) * 255.0), tf.uint8)
    height, width = tf.shape(grey)[1], tf.shape(grey)[2]
    rows = tf.range(height)[:, None]
    columns = tf.range(width)[None, :]
    box = (tf.abs(rows - row) <= 1) & (tf.abs(columns - column) <= 1)
    centre = (rows == row) & (columns == column)
    first = tf.where(centre, tf.constant(255, tf.uint8), tf.where(box, tf.constant(0, tf.uint8), grey[0]))
    grey = tf.concat([first[None], grey[1:]], axis=0)
    return tf.repeat(grey[..., None], 3, axis=-1)


def _unit(x):
    return x / tf.maximum(tf.norm(x, axis=-1, keepdims=True), 1e-12)


class ImageSummaries:
    """Writes the pictures of the module docstring into a summary writer.

    Args:
        photos: uint8 `[NUM_PHOTOS, S, S, 3]`, S a multiple of 32.
        every: steps between pictures (0 = never).
    """

    def __init__(self, photos, every):
        self.photos = np.asarray(photos, np.uint8)
        self.every = int(every)
        self._write = self._written_by = None

    @classmethod
    def from_source(cls, source, image_size, every):
        """The first `NUM_PHOTOS` images of `source`, centre-cropped and resized to
        `image_size`; None when `every` is 0 (nothing is read)."""
        if not every:
            return None
        from PIL import Image  # pylint: disable=import-outside-toplevel

        photos = [
            Image.fromarray(element["image"])
            for element in source.dataset().take(NUM_PHOTOS).as_numpy_iterator()
        ]
        return cls(load_images(photos, NUM_PHOTOS, image_size, image_size), every)

    def due(self, step, num_steps, last):
        """Whether the chunk of `num_steps` steps that ended at `step` crossed a multiple
        of `every` (or ended the run)."""
        return bool(self.every) and (step // self.every > (step - num_steps) // self.every or last)

    def attach(self, model):
        """Makes `model`'s train step keep the sample of its similarities that the
        histograms show (`model.last_step`). Call under the strategy's scope, before the
        train step is traced."""
        model.last_step = LastStepSample([term.name for term in model.terms])

    def write(self, model, step, writer):
        """Writes the pictures of `model` at `step` into `writer`, and the histograms
        of its last step when `attach`ed.

        The forward pass, the pictures and the summary ops run as one `tf.function`,
        traced at the first write (a few seconds) and reused after that.
        """
        if self._written_by != (id(model), id(writer)):
            self._written_by = (id(model), id(writer))
            probe = served_model(model.encoder)

            @tf.function
            def write_pictures(photos, step):
                pictures = _pictures(probe, tf.cast(photos, tf.float32))
                last_step = model.last_step.values() if model.last_step is not None else {}
                with writer.as_default(step=step):
                    tf.summary.image("pictures/photo", photos, max_outputs=NUM_PHOTOS)
                    for name in ("features_pca", "similarity"):
                        tf.summary.image(f"pictures/{name}", pictures[name], max_outputs=NUM_PHOTOS)
                    for term, similarities in last_step.items():
                        prefix = f"{term}_" if term else ""
                        for name, values in zip(("positive", "negative"), similarities):
                            tf.summary.histogram(f"similarity/{prefix}{name}", values)

            self._write = write_pictures
        self._write(tf.constant(self.photos), tf.constant(step, tf.int64))


def _pictures(probe, images):
    """The pictures `ImageSummaries.write` shows, computed in one graph (no variable
    written). `probe` is `served_model(model.encoder)`."""
    features = tf.cast(probe(images, training=False), tf.float32)
    point = (features.shape[1] // 2, features.shape[2] // 2)
    return {"features_pca": pca_rgb(features), "similarity": similarity_map(features, point)}


def attach(summaries, model):
    """The loop's hook before training: `summaries.attach(model)` (nothing when None)."""
    if summaries is not None:
        summaries.attach(model)


def maybe_write(summaries, model, step, num_steps, last, writer):
    """The loop's hook: writes `summaries` when due (nothing when either is None)."""
    if summaries is not None and writer is not None and summaries.due(step, num_steps, last):
        summaries.write(model, step, writer)


PICTURE_TAGS = ("pictures/photo", "pictures/features_pca", "pictures/similarity")


def read_pictures(event_files):
    """`{step: {tag: uint8 [N, H, W, 3]}}` of the pictures in TensorBoard event files
    (decoded from their PNGs), and `{step: {tag: [low, high, count] buckets}}` of the
    similarity histograms."""
    pictures, histograms = {}, {}
    for path in event_files:
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag in PICTURE_TAGS:
                    pngs = tf.make_ndarray(value.tensor)[2:]  # [width, height, png...]
                    images = np.stack([tf.image.decode_png(png).numpy() for png in pngs])
                    pictures.setdefault(event.step, {})[value.tag] = images
                elif value.tag.startswith("similarity/"):
                    buckets = tf.make_ndarray(value.tensor)
                    histograms.setdefault(event.step, {})[value.tag] = buckets
    return pictures, histograms


def picture_grid(pictures, scale=1):
    """One uint8 picture: a row per photo, the `PICTURE_TAGS` side by side, each
    feature picture enlarged (nearest neighbour) to the photo's size, then everything
    by `scale`, with 4-pixel white gaps."""
    photos = pictures[PICTURE_TAGS[0]]
    height, width = photos.shape[1:3]
    rows = []
    for index in range(len(photos)):
        cells = []
        for tag in PICTURE_TAGS:
            image = pictures[tag][index]
            image = np.repeat(np.repeat(image, height // image.shape[0], 0), width // image.shape[1], 1)
            cells += [image, np.full((height, 4, 3), 255, np.uint8)]
        rows += [np.concatenate(cells[:-1], axis=1), np.full((4, cells[0].shape[1] * 3 + 8, 3), 255, np.uint8)]
    grid = np.concatenate(rows[:-1], axis=0)
    return np.repeat(np.repeat(grid, scale, 0), scale, 1)
