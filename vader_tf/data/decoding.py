"""Encoded image bytes -> RGB pixels, and how bad files are survived (named and counted).

Bad input (unreadable, empty, truncated, corrupt or non-image files) is skipped, never
fatal, and every skip is named and counted. A cheap in-graph structural check
(`encoded_image_problem`: magic bytes, and for PNG, GIF, BMP and WebP the end-of-stream
marker or declared size) gives a precise reason for most bad files. Reading, the check and
decoding run inside one per-image error guard (`checked_decode`), so a file that passes the
check but still cannot be read or decoded is caught in graph as well; only then is it read
a second time, to tell an unreadable file from undecodable data in the reason. A failing
element calls a rare `tf.py_function` that logs the source id with the reason and records
it in the source's `SkipCounter`. JPEG data after the end-of-image marker (phone "motion
photos", camera trailers) is accepted, as TensorFlow and PIL decode it.

When every image of a source has been rejected, the counter raises `NoUsableImagesError`
instead of letting an endless stream filter out everything forever.

Colour profiles are not applied: decoding ignores them, and `without_icc_profile` drops
PNG iCCP chunks whose (harmless) libpng warnings would otherwise flood stderr. EXIF
orientation is not applied either (as in TensorFlow's decoders).
"""

import threading

import tensorflow as tf
from absl import logging

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # An empty IEND chunk with its CRC.
_FORMAT_NAMES = ("JPEG", "PNG", "GIF", "BMP", "WebP")


class NoUsableImagesError(ValueError):
    """Every image of a source was rejected as unreadable: there is nothing to train on."""


class SkipCounter:
    """Thread-safe record of the inputs a pipeline skipped as unreadable.

    Args:
        total: number of distinct inputs of the source. When all of them have been
            skipped, `record` raises `NoUsableImagesError` (kept in `error`).
        description: what the source is, for that error.

    Attributes:
        count: number of skip events (a bad file read in several epochs counts each time;
            a source served from its decoded cache decodes, and counts, each file once).
        files: `{source_id: reason}` for every distinct skipped input.
        error: the `NoUsableImagesError` raised once every input was rejected, else None.
    """

    def __init__(self, total=None, description="the image source"):
        self._lock = threading.Lock()
        self.total = total
        self.description = description
        self.count = 0
        self.files = {}
        self.error = None

    def record(self, source_id, reason):
        """Counts one skip; logs a warning the first time `source_id` is skipped.

        Raises:
            NoUsableImagesError: every input of the source has now been rejected.
        """
        with self._lock:
            self.count += 1
            first_time = source_id not in self.files
            self.files[source_id] = reason
            if self.total and len(self.files) >= self.total and self.error is None:
                self.error = NoUsableImagesError(
                    f"No usable image in {self.description}: all {len(self.files)} images "
                    "were rejected (each is named in a warning above)."
                )
        if first_time:
            logging.warning("Skipping unreadable image %s: %s", source_id, reason)
        if self.error is not None:
            raise self.error


def checked_decode(read, source_id, skipped):
    """Reads, checks and decodes one image, or counts `source_id` as skipped (in graph).

    Args:
        read: callable returning the encoded image (scalar `tf.string`); it may fail.
        source_id: scalar `tf.string` naming the image in warnings.
        skipped: the source's `SkipCounter`.

    Returns:
        `{"image": uint8 [H, W, 3], "source_id": string, "ok": bool}`. When `ok` is False
        the input could not be read, failed the structural check or could not be decoded
        (and was counted as skipped) and `image` is a 1x1 placeholder: filter it out.
    """
    placeholder = tf.zeros([1, 1, 3], tf.uint8)
    encoded, readable = _attempt(read, tf.constant(b""))
    problem = tf.where(readable, encoded_image_problem(encoded), "could not be read")
    passed_check = tf.equal(problem, "")

    def decode_if_checked():  # Bytes that failed the check are never decoded.
        with tf.control_dependencies([tf.debugging.Assert(passed_check, [problem])]):
            return decode_rgb(encoded)

    image, decoded = _attempt(decode_if_checked, placeholder)
    problem = tf.where(
        tf.logical_and(passed_check, tf.logical_not(decoded)),
        tf.strings.join([format_name(encoded), " data could not be decoded (corrupt or truncated)"]),
        problem,
    )
    ok = tf.logical_and(passed_check, decoded)

    def record_skip():
        tf.py_function(
            lambda name, reason: skipped.record(name.numpy().decode(), reason.numpy().decode()),
            [source_id, problem],
            Tout=[],
        )
        return tf.identity(image)

    image = tf.cond(ok, lambda: tf.identity(image), record_skip)
    return {"image": tf.ensure_shape(image, [None, None, 3]), "source_id": source_id, "ok": ok}


def _attempt(compute, fallback):
    """`(compute(), True)`, or `(fallback, False)` if `compute` fails (graph-compatible).

    The per-image error guard: `compute` runs as a one-element `tf.data` pipeline whose op
    errors are dropped, so a failing read or decode becomes a value instead of an error of
    the whole stream. Keep `compute` free of control flow (`tf.cond`): a conditional around
    or inside the guard costs more than the guard itself.
    """
    result = tf.data.Dataset.from_tensors(0).map(lambda _: (compute(), True)).ignore_errors()
    failed = tf.data.Dataset.from_tensors((fallback, False))
    return result.concatenate(failed).take(1).get_single_element()


def _first_and_last_bytes(encoded):
    """uint8 `[16]` first and `[12]` last bytes of `encoded`, zero-padded when shorter.

    Only these bytes are copied (never the whole file). No known signature contains the
    zero padding, so a short file cannot match one by its padding.
    """
    size = tf.strings.length(encoded)
    zeros = tf.constant(b"\0" * 16)
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(encoded, 0, 16), zeros]), 0, 16)
    tail = tf.strings.join([zeros, tf.strings.substr(encoded, tf.maximum(size - 12, 0), 12)])
    tail = tf.strings.substr(tail, tf.strings.length(tail) - 12, 12)
    return tf.io.decode_raw(head, tf.uint8), tf.io.decode_raw(tail, tf.uint8)


def _starts_with(first_bytes, offset, signature):
    expected = tf.constant(list(signature), tf.uint8)
    return tf.reduce_all(tf.equal(first_bytes[offset : offset + len(signature)], expected))


def _recognised_and_complete(encoded):
    """Bool `[5]` each: does `encoded` start like each of `_FORMAT_NAMES`; is it complete
    as far as cheaply checked. Branch-free (no `tf.cond`): it runs on every image."""
    size = tf.cast(tf.strings.length(encoded), tf.int64)
    head, tail = _first_and_last_bytes(encoded)

    def little_endian_uint32(offset):
        digits = tf.cast(head[offset : offset + 4], tf.int64)
        return tf.reduce_sum(digits * tf.constant([1, 1 << 8, 1 << 16, 1 << 24], tf.int64))

    recognised = tf.stack(
        [
            _starts_with(head, 0, b"\xff\xd8\xff"),
            _starts_with(head, 0, PNG_SIGNATURE),
            tf.logical_or(_starts_with(head, 0, b"GIF87a"), _starts_with(head, 0, b"GIF89a")),
            tf.logical_and(_starts_with(head, 0, b"BM"), size >= 26),
            tf.logical_and(_starts_with(head, 0, b"RIFF"), _starts_with(head, 8, b"WEBP")),
        ]
    )
    complete = tf.stack(
        [
            tf.constant(True),
            _starts_with(tail, 0, _PNG_END),
            tf.equal(tail[-1], 0x3B),
            little_endian_uint32(2) <= size,
            little_endian_uint32(4) + 8 <= size,
        ]
    )
    return recognised, complete


def _first_true(flags):
    """Index of the first True of bool `flags`, or `len(flags)` when none is."""
    return tf.where(
        tf.reduce_any(flags), tf.argmax(tf.cast(flags, tf.int32), output_type=tf.int32), flags.shape[0]
    )


def format_name(encoded):
    """Scalar string: the format `encoded` starts like ("JPEG", ...), or "image"."""
    recognised, _ = _recognised_and_complete(encoded)
    return tf.gather(tf.constant(_FORMAT_NAMES + ("image",)), _first_true(recognised))


_PROBLEMS = (
    "",
    "empty file",
    "not a JPEG, PNG, GIF, BMP or WebP image",
    *(f"truncated {name} data" for name in _FORMAT_NAMES),
)


def encoded_image_problem(encoded):
    """Cheap structural check of encoded image bytes, in graph (branch-free).

    Recognises JPEG, PNG, GIF, BMP and WebP by their magic bytes and checks that each is
    complete where that is cheap and safe: PNG ends with the IEND chunk, GIF with its
    trailer, BMP and WebP are at least as long as their headers declare. JPEG is not
    checked for its end marker: valid files may carry data after it (motion photos,
    camera trailers); truncated JPEG data is caught by the decoder instead.

    Returns:
        Scalar string: `""` when the bytes look like a complete image, else the reason.
    """
    recognised, complete = _recognised_and_complete(encoded)
    truncated = tf.logical_and(recognised, tf.logical_not(complete))
    index = tf.where(
        tf.equal(tf.strings.length(encoded), 0),
        1,
        tf.where(
            tf.reduce_any(recognised),
            tf.where(tf.reduce_any(truncated), 3 + _first_true(recognised), 0),
            2,
        ),
    )
    return tf.gather(tf.constant(_PROBLEMS), index)


def decode_rgb(encoded):
    """Decodes any supported image to uint8 RGB `[H, W, 3]`.

    Grayscale is replicated to three channels, alpha is dropped, palettes are expanded and
    animations give their first frame. 16-bit PNGs are rounded to 8 bits (`v / 257`)
    rather than truncated to their high byte.
    """
    is_png = tf.equal(tf.strings.substr(encoded, 0, len(PNG_SIGNATURE)), PNG_SIGNATURE)

    def decode_png_rounded():
        wide = tf.cast(tf.io.decode_png(encoded, channels=3, dtype=tf.uint16), tf.float32)
        return tf.cast(tf.round(wide / 257.0), tf.uint8)

    def decode_other():
        return tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)

    image = tf.cond(is_png, decode_png_rounded, decode_other)
    return tf.ensure_shape(image, [None, None, 3])


def without_icc_profile(encoded):
    """PNG bytes without their iCCP (ICC colour profile) chunks; other bytes unchanged.

    Two of the sample photos carry an sRGB profile that libpng reports on every decode
    ("iCCP: known incorrect sRGB profile" on stderr, into the progress bar). Decoding
    ignores the profile, so dropping the chunk (each chunk has its own CRC) changes no
    pixel.
    """
    if not encoded.startswith(PNG_SIGNATURE):
        return encoded
    kept, position = [PNG_SIGNATURE], len(PNG_SIGNATURE)
    while position + 8 <= len(encoded):
        end = position + 12 + int.from_bytes(encoded[position : position + 4], "big")
        if encoded[position + 4 : position + 8] != b"iCCP":
            kept.append(encoded[position:end])
        position = end
    kept.append(encoded[position:])
    return b"".join(kept)
