"""Encoded image bytes -> RGB pixels, and how bad files are survived (named and counted).

Bad input (unreadable, empty, truncated, corrupt or non-image files) is skipped, never
fatal, and every skip is named and counted (`checked_decode`). A cheap in-graph structural
check (`encoded_image_problem`: magic bytes, and for PNG, GIF, BMP and WebP the
end-of-stream marker or declared size) gives a precise reason for most bad files; reading
and decoding each run inside an error guard (`_attempt`), so a file that passes the check
but still cannot be read or decoded is caught in graph as well. A failing element calls a
rare `tf.py_function` that logs the source id with the reason and records it in the
source's `SkipCounter`. JPEG data after the end-of-image marker (phone "motion photos",
camera trailers) is accepted, as TensorFlow and PIL decode it.

Cost, measured in isolation (CPU time per image of a 64 x 64 PNG, one element at a time,
on the loaded 2-core machine): read + decode alone 0.09-0.15 ms; with the check and the
two guards 0.45-0.65 ms. The guards dominate (a nested `tf.data` iterator each, 0.15-0.3
ms); one guard around read, check and decode together, a branch-free check, or a guard
outside any `tf.cond` measured the same within noise, and a `reduce`-based guard was
100x slower. Small sources avoid it all through the decoded cache.

The size check (`SizeLimits`, from the header, before decoding) reads PNG, GIF, BMP and
WebP sizes outside the guard and only JPEG's header parser inside it: each op inside
the guard is paid per image, as the guard's nested pipeline is built per element (the
whole header parse inside it doubled the cost). Measured as above, 64 x 64 PNG:
0.63-0.67 ms per image before the size check, 0.79-1.06 ms with it.

When every image of a source has been rejected, the counter raises `NoUsableImagesError`
instead of letting an endless stream filter out everything forever.

Colour profiles are not applied: decoding ignores them, and `without_icc_profile` drops
PNG iCCP chunks whose (harmless) libpng warnings would otherwise flood stderr. EXIF
orientation is not applied either (as in TensorFlow's decoders).
"""

import dataclasses
import threading

import tensorflow as tf
from absl import logging

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # An empty IEND chunk with its CRC.
_FORMAT_NAMES = ("JPEG", "PNG", "GIF", "BMP", "WebP")

# 8192 x 8192 (67 MP): a decoded uint8 RGB image of 192 MiB (PNG decodes through 16 bits
# and float32, several times that). Larger files are panoramas, scans or satellite tiles
# that no pretraining set of photos needs at full size.
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192


@dataclasses.dataclass(frozen=True)
class SizeLimits:
    """Image sizes a source accepts; others are skipped and counted before they are decoded.

    The size is read from the file's header (`encoded_image_size`), so an image over the
    pixel limit is never decoded; where the header cannot be read the decoded size is
    checked instead.

    Attributes:
        min_side: smallest accepted height and width, in pixels.
        max_pixels: largest accepted height x width.
    """

    min_side: int = 1
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    @classmethod
    def for_views(cls, image_size, max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
        """The limits of pretraining on `image_size` views: a side of at least
        `image_size // 4` pixels, the side of the dense feature grid (a smaller image
        gives a view fewer distinct pixels than feature cells: a 1x1 image would be
        trained on as a flat colour). Images between that and the view side are used:
        random-resized crops upsample anyway."""
        return cls(min_side=max(1, image_size // 4), max_pixels=max_pixels)

    def refuses(self, size):
        """Scalar bool (in graph): whether an image of `size` (int64 `[height, width]`) is
        refused. Integer arithmetic only (it runs for every image)."""
        return tf.logical_or(
            size[0] * size[1] > self.max_pixels, tf.minimum(size[0], size[1]) < self.min_side
        )

    def problem(self, size):
        """Scalar string (in graph): why an image of `size` is refused (call it only for a
        refused size: it formats strings)."""
        dimensions = tf.strings.join(
            [tf.strings.as_string(size[1]), " x ", tf.strings.as_string(size[0]), " pixels"]
        )
        return tf.cond(
            size[0] * size[1] > self.max_pixels,
            lambda: tf.strings.join(
                [dimensions, f", above the limit of {self.max_pixels} (max_image_pixels)"]
            ),
            lambda: tf.strings.join([dimensions, f", a side below the minimum of {self.min_side}"]),
        )


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
            logging.warning("Skipping image %s: %s", source_id, reason)
        if self.error is not None:
            raise self.error


def checked_decode(read, source_id, skipped, size_limits=None):
    """Reads, checks and decodes one image, or counts `source_id` as skipped (in graph).

    Args:
        read: callable returning the encoded image (scalar `tf.string`); it may fail.
        source_id: scalar `tf.string` naming the image in warnings.
        skipped: the source's `SkipCounter`.
        size_limits: `SizeLimits` (default: `SizeLimits()`); the size is checked from the
            header, before the image is decoded.

    Returns:
        `{"image": uint8 [H, W, 3], "source_id": string, "ok": bool}`. When `ok` is False
        the input could not be read, failed the structural check, had a refused size or
        could not be decoded (and was counted as skipped) and `image` is a 1x1
        placeholder: filter it out.
    """
    size_limits = size_limits or SizeLimits()
    placeholder = tf.zeros([1, 1, 3], tf.uint8)
    encoded, readable = _attempt(read, tf.constant(b""))
    problem = tf.where(readable, encoded_image_problem(encoded), "could not be read")
    passed_check = tf.equal(problem, "")

    # Every op inside the error guard costs per image (its nested pipeline is built for
    # each element): only JPEG's header parser, which may fail, and the decoder run there.
    recognised = _recognised_formats(encoded)
    other_size = _header_size(encoded, recognised)

    def size_checked_decode():
        # A header size of 0 is unknown: the decoded size is checked instead.
        header_size = tf.cond(recognised[0], lambda: _jpeg_size(encoded), lambda: other_size)
        refused = tf.logical_and(
            tf.reduce_all(header_size > 0), size_limits.refuses(header_size)
        )
        image = tf.cond(refused, lambda: placeholder, lambda: decode_rgb(encoded))
        return image, header_size

    unknown_size = tf.zeros([2], tf.int64)
    (image, size), decoded = tf.cond(
        passed_check,
        lambda: _attempt(size_checked_decode, (placeholder, unknown_size)),
        lambda: ((placeholder, unknown_size), tf.constant(False)),
    )
    problem = tf.where(
        tf.logical_and(passed_check, tf.logical_not(decoded)),
        tf.strings.join([format_name(encoded), " data could not be decoded (corrupt or truncated)"]),
        problem,
    )
    size = tf.where(tf.reduce_all(size > 0), size, tf.shape(image, out_type=tf.int64)[:2])
    size_refused = tf.logical_and(decoded, size_limits.refuses(size))
    ok = tf.logical_and(decoded, tf.logical_not(size_refused))
    problem = tf.cond(size_refused, lambda: size_limits.problem(size), lambda: problem)

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
    the whole stream. It costs about 0.15-0.3 ms of CPU per call (a nested iterator); see
    the module doc.
    """
    result = tf.data.Dataset.from_tensors(0).map(lambda _: (compute(), True)).ignore_errors()
    failed = tf.data.Dataset.from_tensors((fallback, False))
    return result.concatenate(failed).take(1).get_single_element()


def _bytes_at(encoded, position, length):
    """`length` bytes of `encoded` at `position` (negative: from the end); b"" if short."""
    size = tf.strings.length(encoded)
    start = position if position >= 0 else size + position
    in_range = tf.logical_and(start >= 0, start + length <= size)
    safe_start = tf.where(in_range, start, 0)
    piece = tf.strings.substr(encoded, safe_start, tf.minimum(length, size))
    return tf.where(in_range, piece, b"")


def _little_endian_uint32(four_bytes):
    digits = tf.cast(tf.io.decode_raw(four_bytes, tf.uint8), tf.int64)
    return tf.reduce_sum(digits * tf.constant([1, 1 << 8, 1 << 16, 1 << 24], tf.int64))



def _recognised_formats(encoded):
    """Bool `[5]`: whether `encoded` starts like each of `_FORMAT_NAMES`."""
    size = tf.cast(tf.strings.length(encoded), tf.int64)
    header6 = _bytes_at(encoded, 0, 6)
    return tf.stack(
        [
            tf.equal(_bytes_at(encoded, 0, 3), b"\xff\xd8\xff"),
            tf.equal(_bytes_at(encoded, 0, 8), PNG_SIGNATURE),
            tf.logical_or(tf.equal(header6, b"GIF87a"), tf.equal(header6, b"GIF89a")),
            tf.logical_and(tf.equal(_bytes_at(encoded, 0, 2), b"BM"), size >= 26),
            tf.logical_and(
                tf.equal(_bytes_at(encoded, 0, 4), b"RIFF"),
                tf.equal(_bytes_at(encoded, 8, 4), b"WEBP"),
            ),
        ]
    )


def format_name(encoded):
    """Scalar string: the format `encoded` starts like ("JPEG", ...), or "image"."""
    names = tf.boolean_mask(tf.constant(_FORMAT_NAMES), _recognised_formats(encoded))
    return tf.cond(tf.size(names) > 0, lambda: names[0], lambda: tf.constant("image"))


def encoded_image_problem(encoded):
    """Cheap structural check of encoded image bytes, in graph.

    Recognises JPEG, PNG, GIF, BMP and WebP by their magic bytes and checks that each is
    complete where that is cheap and safe: PNG ends with the IEND chunk, GIF with its
    trailer, BMP and WebP are at least as long as their headers declare. JPEG is not
    checked for its end marker: valid files may carry data after it (motion photos,
    camera trailers); truncated JPEG data is caught by the decoder instead.

    Returns:
        Scalar string: `""` when the bytes look like a complete image, else the reason.
    """
    size = tf.cast(tf.strings.length(encoded), tf.int64)
    recognised = _recognised_formats(encoded)
    is_bmp, is_webp = recognised[3], recognised[4]

    def declared_size(offset, extra):
        # Only read the header field when the format matched (so it has those bytes).
        return _little_endian_uint32(_bytes_at(encoded, offset, 4)) + extra

    never = lambda: tf.constant(False)  # noqa: E731
    bmp_complete = tf.cond(is_bmp, lambda: declared_size(2, 0) <= size, never)
    webp_complete = tf.cond(is_webp, lambda: declared_size(4, 8) <= size, never)
    complete = tf.stack(
        [
            tf.constant(True),
            tf.equal(_bytes_at(encoded, -12, 12), _PNG_END),
            tf.equal(_bytes_at(encoded, -1, 1), b"\x3b"),
            bmp_complete,
            webp_complete,
        ]
    )
    truncated = tf.reduce_any(tf.logical_and(recognised, tf.logical_not(complete)))
    return tf.case(
        [
            (tf.equal(size, 0), lambda: tf.constant("empty file")),
            (
                tf.logical_not(tf.reduce_any(recognised)),
                lambda: tf.constant("not a JPEG, PNG, GIF, BMP or WebP image"),
            ),
            (truncated, lambda: tf.strings.join(["truncated ", format_name(encoded), " data"])),
        ],
        default=lambda: tf.constant(""),
    )


def _unsigned(encoded, offset, length, big_endian=False):
    """The unsigned integer of `length` bytes at `offset` (int64; 0 if out of range)."""
    digits = tf.cast(tf.io.decode_raw(_bytes_at(encoded, offset, length), tf.uint8), tf.int64)
    weights = [1 << (8 * i) for i in range(length)]
    weights = tf.constant(weights[::-1] if big_endian else weights, tf.int64)
    return tf.reduce_sum(digits * weights[: tf.size(digits)])


def _signed32(encoded, offset):
    value = _unsigned(encoded, offset, 4)
    return tf.where(value >= 1 << 31, value - (1 << 32), value)


def encoded_image_size(encoded, recognised=None):
    """`[height, width]` (int64) of an encoded image, read from its header only.

    JPEG through `tf.io.extract_jpeg_shape` (which fails on a header it cannot parse),
    PNG from IHDR, GIF from its logical screen, BMP from its info header and WebP from its
    VP8, VP8L or VP8X chunk; `[0, 0]` where the format or chunk is not recognised.
    Only the first bytes are read: nothing is decoded.

    Args:
        encoded: scalar `tf.string`.
        recognised: `_recognised_formats(encoded)`, if already computed.
    """
    recognised = _recognised_formats(encoded) if recognised is None else recognised
    return tf.cond(
        recognised[0], lambda: _jpeg_size(encoded), lambda: _header_size(encoded, recognised)
    )


def _jpeg_size(encoded):
    """`[height, width]` of JPEG bytes from their frame header (fails if unparseable)."""
    return tf.io.extract_jpeg_shape(encoded, output_type=tf.int64)[:2]


def _header_size(encoded, recognised):
    """`encoded_image_size` of the formats other than JPEG (`[0, 0]` for JPEG): byte
    fields only, branch-free, so it never fails."""
    _, is_png, is_gif, is_bmp, is_webp = tf.unstack(recognised)
    zero = tf.zeros([2], tf.int64)
    png = tf.stack([_unsigned(encoded, 20, 4, True), _unsigned(encoded, 16, 4, True)])
    gif = tf.stack([_unsigned(encoded, 8, 2), _unsigned(encoded, 6, 2)])
    # BITMAPCOREHEADER (12 bytes) has 16-bit sides; later headers 32-bit, and a negative
    # height for top-down rows.
    bmp = tf.where(
        tf.equal(_unsigned(encoded, 14, 4), 12),
        tf.stack([_unsigned(encoded, 20, 2), _unsigned(encoded, 18, 2)]),
        tf.stack([tf.abs(_signed32(encoded, 22)), tf.abs(_signed32(encoded, 18))]),
    )
    chunk = _bytes_at(encoded, 12, 4)
    fourteen_bits = 1 << 14
    lossy = tf.stack([_unsigned(encoded, 28, 2), _unsigned(encoded, 26, 2)]) % fourteen_bits
    lossless_bits = _unsigned(encoded, 21, 4)  # After VP8L's signature byte 0x2f.
    lossless = tf.stack(
        [lossless_bits // fourteen_bits % fourteen_bits + 1, lossless_bits % fourteen_bits + 1]
    )
    extended = tf.stack([_unsigned(encoded, 27, 3) + 1, _unsigned(encoded, 24, 3) + 1])
    is_lossless = tf.logical_and(
        tf.equal(chunk, b"VP8L"), tf.equal(_bytes_at(encoded, 20, 1), b"\x2f")
    )
    webp = tf.where(
        tf.equal(chunk, b"VP8 "),
        lossy,
        tf.where(is_lossless, lossless, tf.where(tf.equal(chunk, b"VP8X"), extended, zero)),
    )
    size = zero
    for matches, candidate in ((is_webp, webp), (is_bmp, bmp), (is_gif, gif), (is_png, png)):
        size = tf.where(matches, candidate, size)
    return size


def decode_rgb(encoded):
    """Decodes any supported image to uint8 RGB `[H, W, 3]`.

    Grayscale is replicated to three channels, alpha is dropped, palettes are expanded and
    animations give their first frame. 16-bit PNGs are rounded to 8 bits (`v / 257`)
    rather than truncated to their high byte.
    """
    is_png = tf.equal(_bytes_at(encoded, 0, 8), PNG_SIGNATURE)

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
