"""Decoding catalogue and query images into RGB PIL images, the same way everywhere.

EXIF orientation is applied, any mode becomes RGB, an optional bounding box is cropped, and only
the narrow errors that mean "this file is not a usable image" are turned into :class:`ImageDecodeError`
so a caller can skip the file, count it and report it.
"""

from __future__ import annotations

import io
import logging
import math
import re
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clothsim.defaults import DEFAULT_MAX_PIXELS
from clothsim.errors import ClothsimError

logger = logging.getLogger(__name__)

#: The formats a photo is read in. Pillow can open more, but some hand the file to an outside program
#: (EPS runs Ghostscript), and photos come from the public through the server: only picture formats are
#: tried. JPEG and PNG come first, so the usual photo never makes Pillow load its other plug-ins.
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "ICO", "TGA", "JPEG2000", "DIB", "PCX",
                 "SGI", "PSD")


# What Pillow raises for files that are not images, are cut short or lie about their size.
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError)


class ImageDecodeError(ClothsimError, ValueError):
    """A file could not be decoded as an image; ``source`` names it and ``reason`` says why."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: cannot decode image ({reason})")
        self.source = source
        self.reason = reason


# Everything load_image raises for a file that cannot serve as an image: callers that skip and report
# bad files (extraction, adding to an index) catch exactly this, and let programming errors through.
UNUSABLE_IMAGE_ERRORS = (ImageDecodeError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _float_to_8bit(img: Image.Image, source: str) -> Image.Image:
    """A 32-bit float image (mode ``F``, e.g. a scientific TIFF) as 8-bit grey: values in 0..1 are scaled by
    255, values in 0..255 kept; anything else has no agreed meaning and is refused. (Pillow's own
    ``convert`` clips to 0..255, which turns a 0..1 image black.)"""
    arr = np.asarray(img, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ImageDecodeError(source, "32-bit float pixels that are not finite (NaN or infinite)")
    low, high = float(arr.min()), float(arr.max())
    if low < 0 or high > 255:
        raise ImageDecodeError(source, f"32-bit float pixels from {low:.3g} to {high:.3g}: neither 0-1 nor 0-255, "
                                       "so their brightness is unknown; convert it to an 8-bit image")
    scale = 255.0 if high <= 1.0 else 1.0
    return Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8), mode="L")


def _to_rgb(img: Image.Image, source: str = "<image>") -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "F":
        img = _float_to_8bit(img, source)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # Pillow's convert("RGB") clips 16/32-bit values at 255; scale to 8 bits instead.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        # Transparent product cut-outs go on white, as catalogue pages show them.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _crop(img: Image.Image, bbox: tuple[int, int, int, int], source: str) -> Image.Image:
    x1, y1, x2, y2 = (int(v) for v in bbox)
    x1, y1 = max(0, x1), max(0, y1)
    x2, y2 = min(img.width, x2), min(img.height, y2)
    if x2 <= x1 or y2 <= y1:
        logger.warning("%s: bounding box %s is empty inside a %dx%d image; using the whole image",
                       source, bbox, img.width, img.height)
        return img
    return img.crop((x1, y1, x2, y2))


# s3://, gs://, hdfs://, file://...: catalogues on shared or object storage (clusters).
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _read_uri(uri: str) -> bytes:
    """The bytes of an object that pyarrow's filesystem layer can open."""
    from pyarrow import fs

    try:
        filesystem, inner = fs.FileSystem.from_uri(uri)
        with filesystem.open_input_file(inner) as handle:
            return handle.read()
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:  # unknown scheme, no credentials, network
        raise ImageDecodeError(uri, f"cannot read it: {exc}") from exc


def _reduce_on_decode(img: Image.Image, bbox: tuple[int, int, int, int] | None, min_side: int) -> float:
    """Ask the JPEG decoder for the smallest DCT scale (1/2, 1/4, 1/8) that keeps the short side of the
    image, or of its box, at ``min_side`` pixels or more; returns the factor coordinates shrink by.

    The network sees the image resized to ``min_side`` anyway, so the pixels skipped were never used;
    decoding an 8 MP photo this way is several times faster.
    """
    width, height = img.size
    short = min(width, height) if bbox is None else min(bbox[2] - bbox[0], bbox[3] - bbox[1])
    if short < 2 * min_side:
        return 1.0
    shrink = short / min_side  # the most the decoder may divide by
    img.draft("RGB", (math.ceil(width / shrink), math.ceil(height / shrink)))
    return img.size[0] / width


def _open_regular_file(path: str | Path) -> BinaryIO:
    """``path`` opened for reading, refusing what is not a regular file without blocking: opening a FIFO
    waits for a writer forever, and a device or socket is no image (checked on the opened file, so a
    file swapped for a FIFO after a check cannot slip through)."""
    import os
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            raise
        raise ImageDecodeError(str(path), f"cannot be read ({exc.strerror or exc})") from exc
    except ValueError as exc:  # an embedded NUL byte
        raise ImageDecodeError(str(path), f"invalid path ({exc})") from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(f"{path} is a directory, not an image file")
        raise ImageDecodeError(str(path), f"{special_file_kind(mode)}, not an image file")
    if hasattr(os, "O_NONBLOCK"):
        os.set_blocking(fd, True)
    raw = io.FileIO(fd, "rb", closefd=True)
    raw.name = str(path)  # what Pillow's messages name (the descriptor's number otherwise)
    return io.BufferedReader(raw)


def special_file_kind(mode: int) -> str:
    """What a file that is neither a regular file nor a folder is, in words (from its ``st_mode``)."""
    import stat

    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def load_image(
    source: str | Path | BinaryIO | bytes,
    bbox: tuple[int, int, int, int] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
) -> Image.Image:
    """Open an image file (or bytes / file object) as an upright RGB PIL image.

    Args:
        source: A path, a URI that pyarrow's filesystem layer opens (``s3://bucket/a.jpg``,
            ``file:///data/a.jpg``), raw bytes or a binary file object.
        bbox: Optional ``(x1, y1, x2, y2)`` crop, applied after EXIF orientation, clipped to the image.
        max_pixels: Refuse images with more pixels than this (``None``: no limit).
        min_side: When given, a JPEG may be decoded at a reduced scale as long as the short side of the
            image (or of its box) stays at least this many pixels; the box is scaled to match. Pass the
            encoder's resize size (``Encoder.decode_min_side``).

    Raises:
        ImageDecodeError: The data is not a decodable image, is truncated, or is too large.
        FileNotFoundError: ``source`` is a path that does not exist.
    """
    name = str(source) if isinstance(source, (str, Path)) else "<upload>"
    if isinstance(source, str) and _URI.match(source):
        source = _read_uri(source)
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    opened = _open_regular_file(source) if isinstance(source, (str, Path)) else None
    if opened is not None:
        source = opened
    try:
        # Image.open reads only the header, so the size check below runs before any pixel is decoded.
        # (No warnings filter here: warnings.catch_warnings is process-wide and request threads share it.)
        with Image.open(source, formats=PHOTO_FORMATS) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise ImageDecodeError(
                    name, f"{img.width}x{img.height} pixels is over the limit of {max_pixels}")
            scale = 1.0
            if min_side is not None and img.format == "JPEG":
                scale = _reduce_on_decode(img, bbox, min_side)
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb(img, name)
    except FileNotFoundError:
        raise
    except _DECODE_ERRORS as exc:
        if isinstance(exc, ImageDecodeError):
            raise
        if isinstance(exc, UnidentifiedImageError):  # Pillow's message only repeats the file's name
            raise ImageDecodeError(name, "not in an image format Pillow recognises") from exc
        raise ImageDecodeError(name, f"{type(exc).__name__}: {exc}") from exc
    finally:
        if opened is not None:
            opened.close()
    if bbox is not None:
        if scale != 1.0:
            bbox = (math.floor(bbox[0] * scale), math.floor(bbox[1] * scale),
                    math.ceil(bbox[2] * scale), math.ceil(bbox[3] * scale))
        rgb = _crop(rgb, bbox, name)
    return rgb
