"""Exporting a torch network to an ONNX model file (the ``torch`` extra).

The export is cached under the user cache folder, keyed by the encoder's fingerprint (weights,
preprocessing) and the exporter's versions; it is written atomically, checked against torch on a probe
batch before first use, and a damaged or truncated file is detected (size and SHA-256 recorded beside
it) and exported again. :func:`export_spec` gives the spec of an encoder together with its exported
file, which the ``onnx`` runtime then executes without torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from clothsim.encoders.base import Encoder, l2_normalize
from clothsim.encoders.spec import EncoderSpec
from clothsim.errors import UsageError
from clothsim.fileio import atomic_path, file_sha256, write_json
from clothsim.optional import require
from clothsim.runtimes import NotRunnableError
from clothsim.runtimes.onnx_runtime import make_session

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

EXPORT_FORMAT = 2  # 2: text towers of causal CLIP models take any length
OPSET = 17
# Largest 1 - cosine between torch's and ONNX Runtime's vector of one probe image that is accepted.
MAX_DISAGREEMENT = 1e-5
PROBE_IMAGES = 4


class NotExportableError(NotRunnableError):
    """The encoder has no single network to export (``export_module()`` is ``None``)."""


class RuntimeMismatchError(NotRunnableError):
    """The exported network does not give torch's vectors; the message gives the measured gap (with
    ``auto``, the torch runtime then runs the network)."""


def _input_size(encoder: Encoder) -> int:
    if encoder.preprocessing is None:
        raise NotExportableError(f"encoder {encoder.name!r} has no fixed input size to export")
    return int(encoder.preprocessing.input_size)


def export_key(encoder: Encoder, part: str = "vectors") -> str:
    """What the cached export depends on: the encoder's fingerprint, which output (``vectors``, or
    ``maps`` for the un-pooled feature map) and the exporter (hex digest)."""
    onnx = require("onnx", feature="exporting to ONNX")
    torch = require("torch", feature="exporting to ONNX")
    identity = {"fingerprint": encoder.fingerprint(), "format": EXPORT_FORMAT, "opset": OPSET,
                "torch": torch.__version__, "onnx": onnx.__version__, "part": part}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cache_path(encoder: Encoder, part: str = "vectors") -> Path:
    """Where the export of ``encoder`` is cached (``$CLOTHSIM_CACHE/onnx/<name>-<key>.onnx``)."""
    from clothsim.user_dirs import default_cache_dir

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


def probe_batch(size: int) -> "torch.Tensor":
    """The seeded random batch an export is checked on."""
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.randn((PROBE_IMAGES, 3, size, size), generator=generator)


@contextmanager
def plain_attention() -> Iterator[None]:
    """torch's fused attention fast path switched off for the time of an export: it has no ONNX form, and
    the plain path it stands for computes the same (transformers such as OpenCLIP's use it in eval mode)."""
    import torch

    mha = getattr(torch.backends, "mha", None)
    if mha is None:
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


def export_module(module: "torch.nn.Module", out_path: str | Path, size: int) -> None:
    """Export ``module`` (float32 ``(N, 3, size, size)`` in, one output) to ``out_path`` with a dynamic
    batch axis; the file is checked by ``onnx.checker``. Written in place: callers write to a temporary
    path and rename."""
    torch = require("torch", feature="exporting to ONNX")
    onnx = require("onnx", feature="exporting to ONNX")
    probe = probe_batch(size)
    # The tracer warns that shape arithmetic becomes constants: intended, the input size is fixed.
    # (catch_warnings is process-wide, but an export happens once per model and cache.)
    with torch.no_grad(), warnings.catch_warnings(), plain_attention():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter, chosen on purpose
        warnings.filterwarnings("ignore", message="Constant folding")  # strided slices stay as they are
        # The TorchScript exporter needs no extra package; the batch axis stays dynamic.
        torch.onnx.export(module.eval(), (probe,), str(out_path), input_names=["images"], output_names=["vectors"],
                          dynamic_axes={"images": {0: "batch"}, "vectors": {0: "batch"}}, opset_version=OPSET,
                          dynamo=False)
    onnx.checker.check_model(str(out_path))


def exported_model(encoder: Encoder, module: "torch.nn.Module", part: str = "vectors",
                   reference: Callable[[Any], Any] | None = None) -> Path:
    """The cached, verified ONNX file of ``module`` (exported now if missing or damaged).

    ``reference`` computes what the module must reproduce on the probe batch (default: the encoder's
    own ``embed``); rows are compared by cosine after flattening.

    Raises:
        RuntimeMismatchError: the export disagrees with ``reference`` beyond :data:`MAX_DISAGREEMENT`.
    """
    path = cache_path(encoder, part)
    meta_path = path.with_suffix(".json")
    damage = _damage(path, meta_path)
    if damage is None:
        return path
    if damage != "missing":
        logger.warning("cached ONNX export %s is damaged (%s); exporting it again", path, damage)
    size = _input_size(encoder)
    logger.info("exporting %s to ONNX (once; cached at %s)", encoder.name, path)
    with atomic_path(path) as tmp:
        export_module(module, tmp, size)
        gap = disagreement(reference or encoder.embed, tmp, probe_batch(size))
        if gap > MAX_DISAGREEMENT:
            raise RuntimeMismatchError(
                f"the ONNX export of {encoder.name} disagrees with torch on a probe batch (1 - cos = {gap:.2e}, "
                f"allowed {MAX_DISAGREEMENT:.0e}); use --runtime torch")
    import onnx
    import torch

    write_json(meta_path, {"size": path.stat().st_size, "sha256": file_sha256(path), "encoder": encoder.name,
                           "fingerprint": encoder.fingerprint(), "max_one_minus_cos": gap,
                           "torch": torch.__version__, "onnx": onnx.__version__})
    return path


def disagreement(reference: Callable[[Any], Any], path: Path, probe: "torch.Tensor") -> float:
    """Largest ``1 - cos`` between the rows ``reference`` gives for ``probe`` and the ONNX file's."""
    session = make_session(path, threads=None)
    outputs = session.run(None, {session.get_inputs()[0].name: probe.numpy()})[0]
    onnx_vectors = l2_normalize(outputs.reshape(len(probe), -1))
    expected = reference(probe)
    expected = expected.numpy() if hasattr(expected, "numpy") else np.asarray(expected)
    torch_vectors = l2_normalize(expected.reshape(len(probe), -1))
    # A row that is zero in both (a network with dead units) agrees; a zero row in one only does not.
    both_zero = (np.linalg.norm(onnx_vectors, axis=1) < 0.5) & (np.linalg.norm(torch_vectors, axis=1) < 0.5)
    cosines = np.where(both_zero, 1.0, np.sum(onnx_vectors * torch_vectors, axis=1))
    return float(1.0 - np.min(cosines))


def export_spec(network: Encoder) -> EncoderSpec:
    """``network``'s spec with its exported model file (cached, verified against ``network``).

    Raises:
        NotExportableError: the encoder has no single network to export.
        UsageError: the encoder lives on a GPU (the export runs on the CPU).
        RuntimeMismatchError: the export disagrees with torch.
    """
    device = getattr(network, "device", "cpu")
    if str(getattr(device, "type", device)) != "cpu":
        raise UsageError(f"the onnx runtime runs on the CPU; {network.name} is on {device} "
                         "(use --runtime torch for a GPU)")
    module = network.export_module()
    if module is None:
        raise NotExportableError(f"encoder {network.name!r} has no network to export to ONNX; use --runtime torch")
    path = exported_model(network, module)
    return network.spec.with_model(path, file_sha256(path))


def feature_maps(encoder: Any, batch: Any) -> "torch.Tensor":
    """The un-pooled last feature map of an ONNX-run encoder (``encoder.network.trunk`` exported once
    more, ``part="maps"``, cached like the vectors' export)."""
    import torch

    network = encoder.network
    session = getattr(encoder, "_maps_session", None)
    if session is None:
        if getattr(network, "trunk", None) is None:
            raise AttributeError(f"{encoder.name} has no feature_maps()")
        path = exported_model(network, network.trunk, part="maps", reference=network.feature_maps)
        session = make_session(path, encoder.threads)
        encoder.__dict__["_maps_session"] = session
    array = np.ascontiguousarray(batch.numpy() if hasattr(batch, "numpy") else batch, dtype=np.float32)
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: array})[0])
