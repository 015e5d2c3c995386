"""The ``onnx`` runtime: an encoder's model file executed by ONNX Runtime's CPU provider, without torch.

An :class:`OnnxEncoder` is a spec (name, weights, preprocessing, precision) plus the ONNX file it names,
checked against the SHA-256 the spec records before a session is made. Preprocessing runs in Pillow and
numpy (:class:`~clothsim.encoders.preprocessing.Preprocessing`), so searching with a shipped, exported,
tuned or quantized model needs no torch. Exporting a torch network to such a file is the ``torch``
extra's job (:mod:`clothsim.runtimes.onnx_export`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from clothsim.encoders.base import Encoder, l2_normalize
from clothsim.encoders.preprocessing import Preprocessing
from clothsim.encoders.spec import EncoderSpec
from clothsim.errors import DataError
from clothsim.fileio import file_sha256, write_json
from clothsim.optional import is_installed
from clothsim.runtimes import NotRunnableError, default_threads

if TYPE_CHECKING:
    import onnxruntime

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install onnxruntime"


def make_session(path: str | Path, threads: int | None = None, sha256: str | None = None,
                 spinning: bool = True) -> "onnxruntime.InferenceSession":
    """An ONNX Runtime CPU session over ``path`` with ``threads`` intra-op threads (default: every core
    this process may use) and no inter-op parallelism, so one session owns its cores. ``spinning=False``
    makes its threads sleep between runs instead of spinning, for a process whose other threads need the
    same cores (a server).

    With the file's ``sha256``, the graph ONNX Runtime optimizes for this CPU is kept in the user cache
    and loaded as it is next time: optimizing takes most of a session's start, which every command pays.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    optimized = _optimized_copy(sha256) if sha256 is not None else None
    if optimized is not None and _intact(optimized):
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            return ort.InferenceSession(str(optimized), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own types; the source is the truth
            logger.info("optimized copy %s not used (%s); optimizing %s again", optimized, exc, path)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized is None:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    draft = optimized.with_name(f".{optimized.name}.{os.getpid()}.tmp")
    try:
        draft.parent.mkdir(parents=True, exist_ok=True)
        options.optimized_model_filepath = str(draft)
        options.log_severity_level = 3  # its notice that the copy is for this CPU only: known, and keyed so
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        write_json(optimized.with_suffix(".json"), {"sha256": file_sha256(draft), "source_sha256": sha256})
        os.replace(draft, optimized)
    except OSError as exc:  # a read-only or full cache: run without keeping the copy
        logger.debug("not keeping the optimized graph of %s: %s", path, exc)
        draft.unlink(missing_ok=True)
        options.optimized_model_filepath = ""
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session


def _optimized_copy(sha256: str) -> Path:
    """Where the graph optimized for this CPU and this ONNX Runtime is kept: it holds kernels chosen for
    the CPU's instruction sets, so the name carries them (and the source file's hash)."""
    import hashlib
    import platform

    import onnxruntime as ort

    from clothsim.user_dirs import default_cache_dir

    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        pass
    machine = hashlib.sha256(f"{platform.machine()}|{flags}|{ort.__version__}".encode()).hexdigest()[:12]
    return default_cache_dir() / "onnx-optimized" / f"{sha256[:24]}-{machine}.onnx"


def _intact(optimized: Path) -> bool:
    """Whether the optimized copy is there and is the file its record names (a damaged one is redone)."""
    import json

    try:
        record = json.loads(optimized.with_suffix(".json").read_text(encoding="utf-8"))
        return optimized.is_file() and record.get("sha256") == file_sha256(optimized)
    except (OSError, ValueError):
        return False


def check_model_file(path: Path, sha256: str | None, what: str) -> None:
    """Refuse a missing model file, or one whose SHA-256 is not the recorded one.

    Raises:
        DataError: the message names the file and what differs.
    """
    if not path.is_file():
        raise DataError(f"{path}: the model file of {what} is missing")
    if sha256 is not None:
        found = file_sha256(path)
        if found != sha256:
            raise DataError(f"{path}: the model file of {what} is not the one recorded (SHA-256 {found[:16]}..., "
                            f"expected {sha256[:16]}...); it is damaged or was replaced")


class OnnxEncoder(Encoder):
    """An encoder whose ``embed`` runs an ONNX model file in ONNX Runtime.

    Args:
        spec: The encoder's identity; its model file is what runs.
        model_path: Where that file is (the spec's path resolved; checked against its SHA-256).
        threads: Intra-op threads of the session (default: every core this process may use).
        network: The encoder the file was exported from, when there is one in this process; extra
            methods it offers (``classify``, ``feature_maps``) and inputs of another size go to it.
        network_factory: Builds that network on first need, when it was not given (so a search never
            builds it, and the methods stay reachable where its plug-in can build it: the torch extra).

    Raises:
        DataError: the file is missing or is not the one the spec records.
    """

    def __init__(self, spec: EncoderSpec, model_path: str | Path, threads: int | None = None,
                 network: Encoder | None = None, network_factory: Callable[[], Encoder] | None = None) -> None:
        if spec.model_sha256 is None:
            raise ValueError(f"{spec.name}: an ONNX encoder needs a spec with a model file and its SHA-256")
        self.model_path = Path(model_path)
        check_model_file(self.model_path, spec.model_sha256, spec.name)
        self._spec = spec
        self.name = spec.name
        self.dim = spec.dim
        self.weights_id = spec.weights_id
        self.weights_source = spec.weights_source
        self.preprocessing = spec.preprocessing
        self.device = "cpu"
        self.network = network
        self._network_factory = network_factory
        self.threads = threads or default_threads()
        self.spinning = True
        self.session = make_session(self.model_path, self.threads, spec.model_sha256)
        inputs = self.session.get_inputs()[0]
        self._input = inputs.name
        self._input_hw = tuple(inputs.shape[2:]) if all(isinstance(d, int) for d in inputs.shape[2:]) else None

    @classmethod
    def from_file(cls, path: str | Path, *, name: str, preprocessing: Preprocessing, weights_id: str | None = None,
                  threads: int | None = None) -> "OnnxEncoder":
        """An encoder over any ONNX file that maps a ``(N, 3, H, W)`` float32 batch to ``(N, dim)``
        vectors (e.g. one exported elsewhere). Its spec names the file and its hash, so it goes to Ray
        workers and into index folders like a built-in.

        Args:
            path: The ONNX file.
            name: What the vectors are called (recorded in indexes built with it).
            preprocessing: How a photo becomes the network input for these weights.
            weights_id: An id for the weights (default: the first 16 hex digits of the file's SHA-256).
        """
        path = Path(path).resolve()
        if not path.is_file():
            raise DataError(f"{path}: no such ONNX file")
        sha = file_sha256(path)
        session = make_session(path, threads=1)
        dim = session.get_outputs()[0].shape[-1]
        if not isinstance(dim, int):
            raise DataError(f"{path}: the model's output has no fixed size, so the vector size is unknown")
        spec = EncoderSpec(name=name, dim=dim, weights_id=weights_id or sha[:16], preprocessing=preprocessing,
                           model_file=str(path), model_sha256=sha)
        return cls(spec, path, threads=threads)

    @property
    def spec(self) -> EncoderSpec:
        return self._spec

    def use_threads(self, threads: int, spinning: bool = True) -> None:
        """Run on ``threads`` intra-op threads from now on (a new session over the same file), spinning
        between runs or not (see :func:`make_session`)."""
        self.threads = int(threads)
        self.spinning = bool(spinning)
        self.session = make_session(self.model_path, self.threads, self._spec.model_sha256, self.spinning)

    def fingerprint(self) -> dict[str, Any]:
        return self._spec.fingerprint()

    @property
    def transform(self) -> Any:
        if self.network is not None and self.preprocessing is None:
            return self.network.transform
        return super().transform

    def export_module(self) -> Any:
        return self.network.export_module() if self.network is not None else None

    def embed(self, batch: Any) -> np.ndarray:
        array = batch.numpy() if hasattr(batch, "numpy") else np.asarray(batch)
        array = np.ascontiguousarray(array, dtype=np.float32)
        if array.ndim != 4 or array.shape[1] != 3:
            raise ValueError(f"{self.name}: batch must have shape (N, 3, H, W), got {array.shape}")
        if array.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._input_hw is not None and tuple(array.shape[2:]) != self._input_hw:
            network = self._built_network()
            if network is None:
                raise ValueError(f"{self.name}: the model takes {self._input_hw[0]}x{self._input_hw[1]} images, "
                                 f"got {array.shape[2]}x{array.shape[3]}")
            return network.embed(batch)  # the export fixed the size; any other is the network's to run
        return l2_normalize(self.session.run(None, {self._input: array})[0])

    def feature_maps(self, batch: Any) -> Any:
        """The un-pooled last feature map, as the torch network's ``feature_maps`` (its export is made
        and cached on first use; the ``torch`` extra). Raises ``AttributeError`` when there is none."""
        network = self._built_network()
        if network is None or not hasattr(network, "feature_maps"):
            raise AttributeError(f"{self.name} has no feature_maps()")
        from clothsim.runtimes.onnx_export import feature_maps

        return feature_maps(self, batch)

    def _built_network(self) -> Encoder | None:
        """The network, built now by the factory if it was not built yet (``None`` without either)."""
        if self.__dict__.get("network") is None and self.__dict__.get("_network_factory") is not None:
            self.network = self._network_factory()  # type: ignore[misc]
        return self.__dict__.get("network")

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes this class lacks: the network's extra methods (classify, trunk...).
        # Private names never build it (pickling and internal probes must not import torch).
        if name.startswith("_") or name in ("network", "session"):
            raise AttributeError(name)
        network = self._built_network()
        if network is None:
            raise AttributeError(f"{type(self).__name__} {self.__dict__.get('name')!r} has no attribute {name!r}")
        return getattr(network, name)

    def __getstate__(self) -> dict[str, Any]:
        # A session cannot be pickled; a copy in another process opens its own from the same file.
        state = dict(self.__dict__)
        state.pop("session", None)
        state.pop("_maps_session", None)
        state.pop("_network_factory", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.session = make_session(self.model_path, self.threads, self._spec.model_sha256,
                                    self.__dict__.get("spinning", True))


class OnnxRuntime:
    """The ``onnx`` runtime plug-in."""

    description = "ONNX Runtime (CPU provider) over the encoder's model file; no torch needed"
    priority = 10
    executes = "model_file"

    def unavailable_reason(self) -> str | None:
        return None if is_installed("onnxruntime") else f"onnxruntime is not installed: {INSTALL_HINT}"

    def load(self, spec: EncoderSpec, *, threads: int | None = None, device: str = "cpu",
             network: Encoder | None = None, network_factory: Callable[[], Encoder] | None = None) -> Encoder:
        """``spec``'s model file run by ONNX Runtime.

        Raises:
            NotRunnableError: a device other than the CPU, or a spec without a model file.
            DataError: the model file is missing or damaged.
        """
        if str(device) != "cpu":
            raise NotRunnableError(f"the onnx runtime runs on the CPU; {spec.name} was asked for on {device} "
                                   "(use --runtime torch for a GPU)")
        path = spec.model_path()
        if path is None:
            raise NotRunnableError(f"encoder {spec.name!r} has no model file for ONNX Runtime")
        return OnnxEncoder(spec, path, threads=threads, network=network, network_factory=network_factory)
