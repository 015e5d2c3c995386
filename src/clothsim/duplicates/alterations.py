"""Altered copies of a photo, one function per kind, as catalogues carry them: resized, re-compressed,
cropped, mirrored, or with brightness and contrast nudged.

They make the known duplicate pairs that a threshold is calibrated on (``clothsim duplicates
--calibrate``) and that ``benchmarks/duplicates.py`` measures recall on. Each takes the photo and a seeded
``random.Random``, so a copy is the same on every run.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable

from PIL import Image, ImageEnhance, ImageOps

from clothsim.images import load_image

#: The most any kind changes a photo: a resize to 50%, JPEG quality 50, a crop keeping 80% of the area,
#: brightness and contrast within 10%.
RESIZE_SCALE = 0.5
LOWEST_JPEG_QUALITY = 50
MIN_KEPT_AREA = 0.8
MAX_JITTER = 0.1


def resized(image: Image.Image, rng: random.Random) -> Image.Image:
    """Scaled down to half its width and height (a thumbnail re-uploaded as the product photo)."""
    width, height = image.size
    return image.resize((max(1, round(width * RESIZE_SCALE)), max(1, round(height * RESIZE_SCALE))),
                        Image.Resampling.BICUBIC)


def recompressed(image: Image.Image, rng: random.Random) -> Image.Image:
    """Saved again as JPEG at a quality between 50 and 90."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=rng.randint(LOWEST_JPEG_QUALITY, 90))
    return load_image(buffer.getvalue(), max_pixels=None)


def cropped(image: Image.Image, rng: random.Random) -> Image.Image:
    """A crop keeping 80-100% of the area, same aspect, at a random place."""
    width, height = image.size
    side = rng.uniform(MIN_KEPT_AREA, 1.0) ** 0.5
    crop_w, crop_h = max(1, round(width * side)), max(1, round(height * side))
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    return image.crop((left, top, left + crop_w, top + crop_h))


def mirrored(image: Image.Image, rng: random.Random) -> Image.Image:
    """Flipped left to right."""
    return ImageOps.mirror(image)


def retouched(image: Image.Image, rng: random.Random) -> Image.Image:
    """Brightness and contrast each changed by up to 10%, either way."""
    out = ImageEnhance.Brightness(image).enhance(1.0 + rng.uniform(-MAX_JITTER, MAX_JITTER))
    return ImageEnhance.Contrast(out).enhance(1.0 + rng.uniform(-MAX_JITTER, MAX_JITTER))


#: Every kind of alteration, by the name reports use.
KINDS: dict[str, Callable[[Image.Image, random.Random], Image.Image]] = {
    "resize": resized, "jpeg": recompressed, "crop": cropped, "mirror": mirrored, "brightness": retouched,
}


def altered_copies(image: Image.Image, seed: str | int) -> dict[str, Image.Image]:
    """One copy of ``image`` per kind, each from its own generator seeded by ``seed`` and the kind."""
    return {kind: alter(image, random.Random(f"{seed}:{kind}")) for kind, alter in KINDS.items()}
