"""int8 model files: ONNX Runtime static quantization, calibrated on the catalogue's own photos.

An int8 network is numerically another model, so it is another identity: its spec has ``precision:
int8``, its model file is the quantized network, and its weights id and fingerprint carry that file's
SHA-256. An index folder keeps the file with its other model files (``models/``), so searching the
index later runs exactly the model that built it, with ONNX Runtime and no torch. Quantizing needs the
``onnx`` package (the ``torch`` extra), and a float32 model file to start from.

Settings: QDQ format, per-channel int8 weights in 7-bit range, uint8 activations, MinMax calibration, no
layer kept in float; why, and the alternatives weighed, are in ``docs/design-notes.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clothsim.defaults import DEFAULT_CALIBRATION_IMAGES, DEFAULT_CALIBRATION_METHOD
from clothsim.encoders.spec import EncoderSpec
from clothsim.errors import DataError, UsageError
from clothsim.fileio import atomic_path, file_sha256, write_json
from clothsim.optional import require

if TYPE_CHECKING:
    from clothsim.data.records import CatalogRecord

logger = logging.getLogger(__name__)

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
#: Changes whenever :func:`quantize` quantizes differently, so a cached quantization is not reused.
QUANTIZATION_FORMAT = 2


@dataclass(frozen=True)
class Calibration:
    """The photos and recipe that calibrate an int8 model.

    Attributes:
        records: The catalogue; a seeded sample of ``images`` of its photos is decoded.
        images: How many photos (undecodable ones are skipped and replaced).
        method: ``minmax``, ``percentile`` or ``entropy``.
        seed: Seed of the sample.
        use_bbox: Crop photos to their boxes, as the index is built.
    """

    records: Sequence["CatalogRecord"]
    images: int = DEFAULT_CALIBRATION_IMAGES
    method: str = DEFAULT_CALIBRATION_METHOD
    seed: int = 0
    use_bbox: bool = True

    def __post_init__(self) -> None:
        if self.images < 1:
            raise UsageError(f"calibration needs at least one image, got {self.images}")
        if self.method not in CALIBRATION_METHODS:
            raise UsageError(f"calibration method must be one of {CALIBRATION_METHODS}, got {self.method!r}")
        if not self.records:
            raise DataError("int8 calibration needs the catalogue's photos, and it has none")


def check_int8_offered(encoder_name: str, validated: bool, offered: Sequence[str]) -> None:
    """Refuse int8 for an encoder whose plug-in does not declare it validated (``int8_validated``)."""
    if not validated:
        raise UsageError(
            f"--precision int8 is not offered for {encoder_name}: its int8 vectors lost more than 0.01 P@5 "
            f"against float32 (docs/design-notes.md); int8 is offered for: {', '.join(offered) or 'none'}")


def calibration_batches(spec: EncoderSpec, calibration: Calibration, batch_size: int = 8) -> list[np.ndarray]:
    """``calibration.images`` photos of the catalogue (a seeded sample; undecodable ones skipped) as
    input batches of ``spec``'s preprocessing."""
    from clothsim.images import UNUSABLE_IMAGE_ERRORS, load_image

    if spec.preprocessing is None:
        raise UsageError(f"{spec.name} has no single preprocessing to calibrate with")
    records = calibration.records
    order = list(range(len(records)))
    random.Random(calibration.seed).shuffle(order)
    arrays = []
    for i in order:
        if len(arrays) == calibration.images:
            break
        record = records[i]
        try:
            image = load_image(record.path, bbox=record.bbox if calibration.use_bbox else None,
                               min_side=spec.preprocessing.resize_size)
        except UNUSABLE_IMAGE_ERRORS as exc:
            logger.info("calibration: skipping %s", exc)
            continue
        arrays.append(spec.preprocessing(image))
    if not arrays:
        raise DataError("no photo of the catalogue could be decoded for int8 calibration")
    return [np.stack(arrays[i:i + batch_size]) for i in range(0, len(arrays), batch_size)]


def quantize(fp32_model: Path, out_path: Path, batches: Sequence[np.ndarray], method: str = "minmax") -> Path:
    """Statically quantize ``fp32_model`` to int8 (QDQ, per-channel) into ``out_path``, atomically."""
    require("onnx", feature="int8 quantization")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise UsageError(f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}")
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {"images": batch}

    with tempfile.TemporaryDirectory(prefix="clothsim-int8-") as work, atomic_path(out_path) as tmp:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32_model), str(prepared))  # shape inference and folding, as advised
        # reduce_range (7-bit weights): CPUs without VNNI saturate on full-range weights, and an index may
        # be searched on any CPU (docs/design-notes.md, int8 quantization settings).
        quantize_static(str(prepared), str(tmp), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method])
    return out_path


def quantized_spec(fp32: EncoderSpec, calibration: Calibration) -> EncoderSpec:
    """The int8 spec of a float32 spec with a model file: its network quantized, calibrated on
    ``calibration``'s photos.

    The quantized file is cached under the user cache folder, keyed by the float32 model file and the
    calibration recipe (photos, count, method, seed), so an interrupted build resumes without
    calibrating again.

    Raises:
        UsageError: ``fp32`` is not a float32 spec with a model file.
        DataError: no calibration photo could be decoded.
        MissingDependencyError: the ``onnx`` package is not installed.
    """
    from clothsim.user_dirs import default_cache_dir

    if fp32.precision != "fp32":
        raise UsageError(f"{fp32.name} is {fp32.precision} already")
    fp32_path = fp32.model_path()
    if fp32_path is None:
        raise UsageError(f"{fp32.name} has no float32 model file to quantize")
    recipe = {"fp32_sha256": fp32.model_sha256, "format": QUANTIZATION_FORMAT, "count": calibration.images, "method": calibration.method,
              "seed": calibration.seed, "use_bbox": calibration.use_bbox,
              "catalogue": hashlib.sha256("\n".join(r.path for r in calibration.records).encode()).hexdigest()}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:24]
    slug = "".join(c if c.isalnum() or c in "._+-" else "_" for c in fp32.name)[-40:]
    out_path = default_cache_dir() / "int8" / f"{slug}-{key}.onnx"
    meta_path = out_path.with_suffix(".json")
    sha = None
    if out_path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        if meta.get("recipe") == recipe and meta.get("sha256") == file_sha256(out_path):
            sha = meta["sha256"]
    if sha is None:
        logger.info("calibrating int8 %s on %d photos (%s)", fp32.name, calibration.images, calibration.method)
        quantize(fp32_path, out_path, calibration_batches(fp32, calibration), calibration.method)
        sha = file_sha256(out_path)
        write_json(meta_path, {"recipe": recipe, "sha256": sha})
    # In the weights id too, so that every check of a store against an encoder (which compares the
    # weights) tells int8 vectors from float32 ones and one calibration from another.
    return replace(fp32, precision="int8", weights_id=f"{fp32.weights_id}+int8:{sha[:16]}",
                   model_file=str(out_path), model_sha256=sha)
