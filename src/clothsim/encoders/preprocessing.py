"""How a photo becomes a network input, in Pillow and numpy: resize, centre crop, scale, normalise.

The steps are torchvision's ``Resize(resize_size) -> CenterCrop(input_size) -> ToTensor -> Normalize``
for PIL images, done with the same Pillow resize and the same float32 arithmetic, so the arrays are the
ones torchvision would give (``tests/test_preprocessing.py`` compares them on real photos) without
importing torch. The settings belong to the weights: an encoder carries its :class:`Preprocessing`, and
callers never guess them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
#: ``shortest``: the shorter side is resized, the aspect ratio kept (torchvision's ``Resize(int)``);
#: ``squash``: both sides are resized to ``resize_size`` (``Resize((s, s))``), as SigLIP weights and some
#: timm weights expect.
RESIZE_MODES = ("shortest", "squash")


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a network input, fixed by the weights it was trained with.

    Calling it turns an RGB PIL image into a ``(3, input_size, input_size)`` float32 array.

    Attributes:
        input_size: Side of the square array fed to the network.
        resize_size: The shorter image side is resized to this before the centre crop.
        mean: Per-channel mean subtracted after scaling pixels to [0, 1].
        std: Per-channel standard deviation divided by after the mean.
        interpolation: ``"bilinear"`` or ``"bicubic"``.
        resize_mode: ``"shortest"`` (aspect ratio kept) or ``"squash"`` (see :data:`RESIZE_MODES`).
    """

    input_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    resize_mode: str = "shortest"

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.interpolation not in _RESAMPLING:
            raise ValueError(f"interpolation must be one of {sorted(_RESAMPLING)}, got {self.interpolation!r}")
        if self.input_size < 1 or self.resize_size < 1:
            raise ValueError(f"input_size and resize_size must be positive, got {self.input_size} and "
                             f"{self.resize_size}")
        # Tuples whatever was passed (JSON gives lists), so that equal settings compare and hash equal.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def __call__(self, image: Image.Image) -> np.ndarray:
        """An RGB PIL image -> a normalised ``(3, input_size, input_size)`` float32 array."""
        return self.normalise(self.resize_and_crop(image))

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        """The shorter side resized to :attr:`resize_size` (aspect kept; or both sides, ``squash``), then
        the centre square of :attr:`input_size` (padded with black where the image is smaller, as
        torchvision pads)."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        width, height = image.size
        if self.resize_mode == "squash":
            side = self.resize_size
            if (width, height) != (side, side):
                image = image.resize((side, side), _RESAMPLING[self.interpolation])
            return _centre_crop(image, self.input_size)
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize_size, int(self.resize_size * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
        if size != (width, height):
            image = image.resize(size, _RESAMPLING[self.interpolation])
        return _centre_crop(image, self.input_size)

    def normalise(self, image: Image.Image) -> np.ndarray:
        """An RGB image of any size -> ``(3, H, W)`` float32: pixels / 255, minus mean, over std."""
        pixels = np.asarray(image, dtype=np.uint8)
        out = pixels.astype(np.float32)
        # The same float32 operations, in the same order, as ToTensor then Normalize.
        out /= np.float32(255.0)
        out -= np.asarray(self.mean, dtype=np.float32)
        out /= np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(out.transpose(2, 0, 1))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        # The default mode is left out, so the fingerprints of indexes written before it existed still match.
        if data["resize_mode"] == "shortest":
            del data["resize_mode"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: a field is missing, unknown or out of range.
        """
        fields = {"input_size", "resize_size", "mean", "std", "interpolation", "resize_mode"}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"unknown preprocessing fields {sorted(unknown)}")
        return cls(input_size=int(data["input_size"]), resize_size=int(data["resize_size"]),
                   mean=tuple(data["mean"]), std=tuple(data["std"]),  # type: ignore[arg-type]
                   interpolation=str(data["interpolation"]), resize_mode=str(data.get("resize_mode", "shortest")))

    def build_transform(self) -> Any:
        """The same steps as a torchvision transform (PIL image -> tensor), for training pipelines that
        compose it with augmentations. Needs the torch extra."""
        from clothsim.optional import require

        transforms = require("torchvision.transforms", "torch")
        modes = {"bilinear": transforms.InterpolationMode.BILINEAR, "bicubic": transforms.InterpolationMode.BICUBIC}
        size = (self.resize_size, self.resize_size) if self.resize_mode == "squash" else self.resize_size
        return transforms.Compose([
            transforms.Resize(size, interpolation=modes[self.interpolation]),
            transforms.CenterCrop(self.input_size),
            transforms.ToTensor(),
            transforms.Normalize(self.mean, self.std),
        ])


def _centre_crop(image: Image.Image, side: int) -> Image.Image:
    width, height = image.size
    if side > width or side > height:
        # torchvision pads left/top by the floor of half the shortfall, right/bottom by the rest.
        canvas = Image.new("RGB", (max(side, width), max(side, height)))
        canvas.paste(image, ((max(side, width) - width) // 2, (max(side, height) - height) // 2))
        image = canvas
        width, height = image.size
        if (width, height) == (side, side):
            return image
    top = int(round((height - side) / 2.0))
    left = int(round((width - side) / 2.0))
    return image.crop((left, top, left + side, top + side))
