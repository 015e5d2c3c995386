"""int8 encoders: ONNX Runtime static quantization, calibrated on the catalogue's own photos.

An int8 network is numerically another model, so its vectors are stamped as such: the fingerprint
carries ``precision: int8`` and the SHA-256 of the quantized file, and the file is kept inside the index
folder (``models/``) so that searching the index later uses exactly the model that built it.

Settings, chosen by measurement on 48 clothing-dataset-small test photos, calibrating on 64 train
photos: QDQ format, per-channel int8 weights, uint8 activations, MinMax calibration, no layer kept in
float. Mean cosine to the float32 vectors: vgg16 0.9996 (percentile calibration 0.9988);
efficientnet_lite0 0.9905 (percentile 0.9925, at 8x the calibration time), and keeping its depthwise
convolutions in float made it worse (0.90; first convolution and depthwise 0.96).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clothsim.errors import DataError, UsageError
from clothsim.fileio import file_sha256
from clothsim.runtimes.onnx_runtime import OnnxEncoder, exported_model

if TYPE_CHECKING:
    from clothsim.data.records import CatalogRecord
    from clothsim.encoders.base import Encoder

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_CALIBRATION_IMAGES = 64
MODELS_DIR = "models"


def int8_model_path(index_dir: str | Path, encoder_name: str) -> Path:
    """Where an index folder keeps the int8 model its vectors were made with."""
    slug = "".join(c if c.isalnum() or c in "._+-" else "_" for c in encoder_name)[-60:]
    return Path(index_dir) / MODELS_DIR / f"{slug}-int8.onnx"


class Int8Encoder(OnnxEncoder):
    """An :class:`OnnxEncoder` over a quantized file; its fingerprint says so."""

    def __init__(self, source: "Encoder", model_path: Path, threads: int | None = None) -> None:
        super().__init__(source, model_path, threads=threads)
        self.quantized_sha256 = file_sha256(self.model_path)
        # In the weights id too, so that every check of a store against an encoder (which compares the
        # weights) tells int8 vectors from float32 ones and one calibration from another.
        self.weights_id = f"{source.weights_id}+int8:{self.quantized_sha256[:16]}"
        spec = getattr(source, "build_spec", None)
        if spec is not None:
            self.build_spec = spec.with_int8(self.model_path, self.quantized_sha256)

    def fingerprint(self) -> dict[str, Any]:
        return {**self.source.fingerprint(), "weights": self.weights_id, "precision": "int8",
                "quantized_sha256": self.quantized_sha256}


def check_int8_offered(encoder_name: str, validated: bool) -> None:
    """Refuse int8 for an encoder whose plug-in does not declare it validated (``int8_validated``)."""
    if not validated:
        from clothsim.encoders.registry import encoder_registry

        offered = [n for n, p in encoder_registry.items() if getattr(p, "int8_validated", False)]
        raise UsageError(
            f"--precision int8 is not offered for {encoder_name}: its int8 vectors lost more than 0.01 P@5 "
            f"against float32 when measured (see the README); int8 is offered for: {', '.join(offered) or 'none'}")


def load_int8_encoder(source: "Encoder", model_path: str | Path, expected_sha256: str | None = None,
                      threads: int | None = None) -> Int8Encoder:
    """The int8 encoder of an existing quantized file (e.g. the one an index folder keeps).

    Raises:
        DataError: the file is missing, or is not the one the index was built with.
    """
    path = Path(model_path)
    if not path.is_file():
        raise DataError(f"{path}: the int8 model this index was built with is missing; rebuild the index "
                        "(clothsim index ... --precision int8 --overwrite)")
    if expected_sha256 is not None and file_sha256(path) != expected_sha256:
        raise DataError(f"{path}: the int8 model differs from the one the index was built with (SHA-256); "
                        "rebuild the index (clothsim index ... --precision int8 --overwrite)")
    return Int8Encoder(source, path, threads=threads)


def calibration_batches(records: Sequence["CatalogRecord"], transform: Callable, count: int, seed: int,
                        use_bbox: bool, batch_size: int = 8) -> list[np.ndarray]:
    """``count`` photos of the catalogue (a seeded sample; undecodable ones skipped) as input batches."""
    from clothsim.images import UNUSABLE_IMAGE_ERRORS, load_image

    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    tensors = []
    for i in order:
        if len(tensors) == count:
            break
        record = records[i]
        try:
            image = load_image(record.path, bbox=record.bbox if use_bbox else None)
        except UNUSABLE_IMAGE_ERRORS as exc:
            logger.info("calibration: skipping %s", exc)
            continue
        tensors.append(np.asarray(transform(image), dtype=np.float32))
    if not tensors:
        raise DataError("no photo of the catalogue could be decoded for int8 calibration")
    return [np.stack(tensors[i:i + batch_size]) for i in range(0, len(tensors), batch_size)]


def quantize(fp32_model: Path, out_path: Path, batches: Sequence[np.ndarray], method: str = "minmax") -> Path:
    """Statically quantize ``fp32_model`` to int8 (QDQ, per-channel) into ``out_path``, atomically."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from clothsim.fileio import atomic_path

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
        quantize_static(str(prepared), str(tmp), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method])
    return out_path


def build_int8_encoder(
    source: "Encoder",
    records: Sequence["CatalogRecord"],
    *,
    count: int = DEFAULT_CALIBRATION_IMAGES,
    method: str = "minmax",
    seed: int = 0,
    use_bbox: bool = True,
    threads: int | None = None,
) -> Int8Encoder:
    """Calibrate on ``records`` and quantize ``source`` to int8.

    The quantized file is cached under the user cache folder, keyed by the float32 model and the
    calibration recipe (photos, count, method, seed), so an interrupted build resumes without
    calibrating again; :func:`keep_in_index` then copies it into the index folder.

    Raises:
        NotExportableError: ``source`` has no network to export.
        DataError: no calibration photo could be decoded.
    """
    from clothsim.cache import default_cache_dir
    from clothsim.fileio import write_json
    from clothsim.runtimes.onnx_runtime import NotExportableError

    if count < 1:
        raise UsageError(f"calibration needs at least one image, got {count}")
    if method not in CALIBRATION_METHODS:
        raise UsageError(f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}")
    module = source.export_module()
    if module is None:
        raise NotExportableError(f"encoder {source.name!r} has no network to quantize")
    fp32 = exported_model(source, module)
    recipe = {"fp32_sha256": file_sha256(fp32), "count": count, "method": method, "seed": seed, "use_bbox": use_bbox,
              "catalogue": hashlib.sha256("\n".join(r.path for r in records).encode()).hexdigest()}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:24]
    out_path = default_cache_dir() / "int8" / f"{fp32.stem}-{key}.onnx"
    meta_path = out_path.with_suffix(".json")
    if out_path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("recipe") == recipe and meta.get("sha256") == file_sha256(out_path):
            return Int8Encoder(source, out_path, threads=threads)
    logger.info("calibrating int8 %s on %d photos (%s)", source.name, count, method)
    batches = calibration_batches(records, source.transform, count, seed, use_bbox)
    quantize(fp32, out_path, batches, method)
    write_json(meta_path, {"recipe": recipe, "sha256": file_sha256(out_path)})
    return Int8Encoder(source, out_path, threads=threads)


def keep_in_index(encoder: Int8Encoder, index_dir: str | Path) -> Path:
    """Copy the int8 model into the index folder (atomically; skipped when the same file is there)."""
    import shutil

    from clothsim.fileio import atomic_path

    target = int8_model_path(index_dir, encoder.name)
    if target.is_file() and file_sha256(target) == encoder.quantized_sha256:
        return target
    with atomic_path(target) as tmp:
        shutil.copyfile(encoder.model_path, tmp)
    return target
