"""ONNX Runtime: an encoder's network exported once to ONNX and run by ONNX Runtime's CPU provider.

On this project's 2-core build machine it ran efficientnet_lite0 about 3x faster than eager torch on the
same batch, with the same vectors (see ``benchmarks/extraction.py``). The export is cached under the
user cache folder, keyed by the encoder's fingerprint (weights, preprocessing) and the exporter's
version; it is written atomically, checked against torch on a probe batch before first use, and a
damaged or truncated file is detected (size and SHA-256 recorded beside it) and exported again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from clothsim.errors import ClothsimError, UsageError
from clothsim.fileio import file_sha256

if TYPE_CHECKING:
    import torch

    from clothsim.encoders.base import Encoder

logger = logging.getLogger(__name__)

EXPORT_FORMAT = 1
OPSET = 17
# Largest 1 - cosine between torch's and ONNX Runtime's vector of one probe image that is accepted.
MAX_DISAGREEMENT = 1e-5
PROBE_IMAGES = 4
INSTALL_HINT = "pip install onnxruntime onnx"


class NotExportableError(UsageError):
    """The encoder has no single network to export (``export_module()`` is ``None``)."""


class RuntimeMismatchError(ClothsimError, RuntimeError):
    """The exported network does not give torch's vectors; the message gives the measured gap."""


def default_threads() -> int:
    """The cores this process may run on (what ONNX Runtime uses unless told otherwise)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class OnnxRuntime:
    """The ``onnx`` runtime plug-in."""

    description = "ONNX Runtime (CPU provider) over the exported network; same vectors, ~3x eager torch"
    priority = 10

    def unavailable_reason(self) -> str | None:
        missing = [name for name in ("onnxruntime", "onnx") if importlib.util.find_spec(name) is None]
        return f"{' and '.join(missing)} not installed: {INSTALL_HINT}" if missing else None

    def prepare(self, encoder: "Encoder", threads: int | None = None) -> "Encoder":
        """``encoder`` run by ONNX Runtime (its parts, for an ensemble).

        Raises:
            NotExportableError: the encoder has no network to export.
            UsageError: the encoder lives on a GPU (this runtime uses the CPU provider).
            RuntimeMismatchError: the export disagrees with torch beyond :data:`MAX_DISAGREEMENT`.
        """
        composite = encoder.with_parts(lambda part: self.prepare(part, threads))
        if composite is not None:
            return composite
        if getattr(encoder, "device", None) is not None and encoder.device.type != "cpu":
            raise UsageError(f"the onnx runtime runs on the CPU; {encoder.name} is on {encoder.device} "
                             "(use --runtime torch for a GPU)")
        module = encoder.export_module()
        if module is None:
            raise NotExportableError(f"encoder {encoder.name!r} has no network to export to ONNX; "
                                     "use --runtime torch")
        path = exported_model(encoder, module)
        return OnnxEncoder(encoder, path, threads=threads)


def _input_size(encoder: "Encoder") -> int:
    if encoder.preprocessing is None:
        raise NotExportableError(f"encoder {encoder.name!r} has no fixed input size to export")
    return int(encoder.preprocessing.input_size)


def export_key(encoder: "Encoder", part: str = "vectors") -> str:
    """What the cached export depends on: the encoder's fingerprint, which output (``vectors``, or
    ``maps`` for the un-pooled feature map) and the exporter (hex digest)."""
    import onnx
    import torch

    identity = {"fingerprint": encoder.fingerprint(), "format": EXPORT_FORMAT, "opset": OPSET,
                "torch": torch.__version__, "onnx": onnx.__version__, "part": part}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cache_path(encoder: "Encoder", part: str = "vectors") -> Path:
    """Where the export of ``encoder`` is cached (``$CLOTHSIM_CACHE/onnx/<name>-<key>.onnx``)."""
    from clothsim.cache import default_cache_dir

    slug = re.sub(r"[^A-Za-z0-9._+-]+", "_", encoder.name).strip("_.")[-40:] or "encoder"
    suffix = "" if part == "vectors" else f"-{part}"
    return default_cache_dir() / "onnx" / f"{slug}{suffix}-{export_key(encoder, part)}.onnx"


def _damage(path: Path, meta_path: Path) -> str | None:
    """Why the cached export at ``path`` cannot be used, or ``None`` when it is intact."""
    if not path.is_file():
        return "missing"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"its record {meta_path.name} is unreadable ({exc})"
    if meta.get("size") != path.stat().st_size:
        return f"size {path.stat().st_size} bytes, recorded {meta.get('size')}"
    if meta.get("sha256") != file_sha256(path):
        return "its SHA-256 differs from the one recorded at export"
    return None


def _probe_batch(size: int) -> "torch.Tensor":
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.randn((PROBE_IMAGES, 3, size, size), generator=generator)


def exported_model(encoder: "Encoder", module: "torch.nn.Module", part: str = "vectors",
                   reference: Callable[[Any], np.ndarray] | None = None) -> Path:
    """The cached, verified ONNX file of ``module`` (exported now if missing or damaged).

    ``reference`` computes what the module must reproduce on the probe batch (default: the encoder's
    own ``embed``); rows are compared by cosine after flattening.
    """
    from clothsim.fileio import atomic_path, write_json

    path = cache_path(encoder, part)
    meta_path = path.with_suffix(".json")
    damage = _damage(path, meta_path)
    if damage is None:
        return path
    if damage != "missing":
        logger.warning("cached ONNX export %s is damaged (%s); exporting it again", path, damage)
    import onnx
    import torch

    probe = _probe_batch(_input_size(encoder))
    logger.info("exporting %s to ONNX (once; cached at %s)", encoder.name, path)
    with atomic_path(path) as tmp:
        # The tracer warns that shape arithmetic becomes constants: intended, the input size is fixed.
        # (catch_warnings is process-wide, but an export happens once per model and cache.)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter, chosen on purpose
            # The TorchScript exporter needs no extra package; the batch axis stays dynamic.
            torch.onnx.export(module.eval(), (probe,), str(tmp), input_names=["images"], output_names=["vectors"],
                              dynamic_axes={"images": {0: "batch"}, "vectors": {0: "batch"}}, opset_version=OPSET,
                              dynamo=False)
        onnx.checker.check_model(str(tmp))
        gap = _disagreement(reference or encoder.embed, tmp, probe)
        if gap > MAX_DISAGREEMENT:
            raise RuntimeMismatchError(
                f"the ONNX export of {encoder.name} disagrees with torch on a probe batch (1 - cos = {gap:.2e}, "
                f"allowed {MAX_DISAGREEMENT:.0e}); use --runtime torch")
    write_json(meta_path, {"size": path.stat().st_size, "sha256": file_sha256(path), "encoder": encoder.name,
                           "fingerprint": encoder.fingerprint(), "max_one_minus_cos": gap,
                           "torch": torch.__version__, "onnx": onnx.__version__})
    return path


def _session(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _disagreement(reference: Callable[[Any], np.ndarray], path: Path, probe: "torch.Tensor") -> float:
    from clothsim.encoders.base import l2_normalize

    session = _session(path, threads=None)
    outputs = session.run(None, {session.get_inputs()[0].name: probe.numpy()})[0]
    onnx_vectors = l2_normalize(outputs.reshape(len(probe), -1))
    expected = reference(probe)
    expected = expected.numpy() if hasattr(expected, "numpy") else np.asarray(expected)
    torch_vectors = l2_normalize(expected.reshape(len(probe), -1))
    # A row that is zero in both (a network with dead units) agrees; a zero row in one only does not.
    both_zero = (np.linalg.norm(onnx_vectors, axis=1) < 0.5) & (np.linalg.norm(torch_vectors, axis=1) < 0.5)
    cosines = np.where(both_zero, 1.0, np.sum(onnx_vectors * torch_vectors, axis=1))
    return float(1.0 - np.min(cosines))


def _encoder_base() -> type:
    from clothsim.encoders.base import Encoder

    return Encoder


class OnnxEncoder(_encoder_base()):  # type: ignore[misc]
    """An encoder whose ``embed`` runs an exported network in ONNX Runtime.

    Everything else (name, fingerprint, transform, and any extra method such as ``feature_maps`` or
    ``classify``) is the torch encoder's, so callers cannot tell the two apart except by speed.
    """

    def __init__(self, source: "Encoder", model_path: Path, threads: int | None = None) -> None:
        import torch

        self.source = source
        self.name = source.name
        self.dim = source.dim
        self.weights_id = source.weights_id
        self.preprocessing = source.preprocessing
        self.device = torch.device("cpu")
        self.model_path = Path(model_path)
        self.threads = threads or default_threads()
        self.session = _session(self.model_path, self.threads)
        self._input = self.session.get_inputs()[0].name
        shape = self.session.get_inputs()[0].shape
        self._input_hw = tuple(shape[2:]) if all(isinstance(d, int) for d in shape[2:]) else None
        self._maps_session: Any = None

    @property
    def transform(self):  # type: ignore[override]
        return self.source.transform

    def fingerprint(self) -> dict[str, Any]:
        return self.source.fingerprint()

    def export_module(self):  # type: ignore[override]
        return self.source.export_module()

    def embed(self, batch: Any) -> np.ndarray:
        from clothsim.encoders.base import l2_normalize

        array = batch.numpy() if hasattr(batch, "numpy") else np.asarray(batch)
        array = np.ascontiguousarray(array, dtype=np.float32)
        if array.ndim != 4 or array.shape[1] != 3:
            raise ValueError(f"{self.name}: batch must have shape (N, 3, H, W), got {array.shape}")
        if array.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._input_hw is not None and tuple(array.shape[2:]) != self._input_hw:
            # The export fixed the image size of the preprocessing; any other size is torch's to run.
            return self.source.embed(batch)
        return l2_normalize(self.session.run(None, {self._input: array})[0])

    def feature_maps(self, batch: Any) -> "torch.Tensor":
        """The un-pooled last feature map (as the torch encoder's ``feature_maps``), run by ONNX
        Runtime; its export is made and cached on first use. Raises ``AttributeError`` when the torch
        encoder has no feature maps."""
        import torch

        if not hasattr(self.source, "feature_maps") or getattr(self.source, "trunk", None) is None:
            raise AttributeError(f"{self.name} has no feature_maps()")
        if self._maps_session is None:
            path = exported_model(self.source, self.source.trunk, part="maps", reference=self.source.feature_maps)
            self._maps_session = _session(path, self.threads)
        array = np.ascontiguousarray(batch.numpy() if hasattr(batch, "numpy") else batch, dtype=np.float32)
        return torch.from_numpy(self._maps_session.run(None, {self._maps_session.get_inputs()[0].name: array})[0])

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes this class lacks; "source" itself must not recurse (unpickling).
        if name in ("source", "_maps_session"):
            raise AttributeError(name)
        return getattr(self.source, name)
