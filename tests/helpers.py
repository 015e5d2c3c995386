"""Helpers shared by the tests (imported as ``helpers``: pyproject puts ``tests/`` on the path)."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CLOTHSIM_SHARED", REPO.parent / "shared"))
CLOTHING = SHARED / "data" / "clothing-dataset-small"
VGG16_WEIGHTS = SHARED / "weights" / "vgg16_features_imagenet.pth"

T = TypeVar("T")


def solid_image(colour: tuple[int, int, int], size: tuple[int, int] = (32, 24), stripe: int = 0) -> Image.Image:
    img = Image.new("RGB", size, colour)
    if stripe:
        for x in range(0, size[0], 4):
            for y in range(size[1]):
                img.putpixel((x, y), (stripe, stripe, stripe))
    return img


def png_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (32, 24), stripe: int = 0) -> bytes:
    """:func:`solid_image` as the bytes of a PNG file (an upload)."""
    buf = io.BytesIO()
    solid_image(colour, size, stripe).save(buf, "PNG")
    return buf.getvalue()


def until(probe: Callable[[], T], timeout_s: float, interval_s: float = 0.1) -> T:
    """Call ``probe`` until it returns something true or ``timeout_s`` has passed; its last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = probe()
        if answer or time.monotonic() >= deadline:
            return answer
        time.sleep(interval_s)
