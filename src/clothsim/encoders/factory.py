"""The one factory: encoders built from a name or from an :class:`~clothsim.encoders.spec.EncoderSpec`.

:func:`create_encoder` turns a name (``efficientnet_lite0``, ``flip:vgg16``, ``tuned:model/``) and its
weights into a spec, then :func:`build_encoder` hands the spec to a runtime. A spec whose model file
exists (the default encoder's, shipped with clothsim; a tuned model's; an index folder's) runs on ONNX
Runtime with no torch at all. Otherwise the encoder's plug-in builds its network (the ``torch`` extra),
and the ``onnx`` runtime gets it exported to a model file first, or the ``torch`` runtime runs it as it
is. Everything that decides the vectors travels in the spec; runtimes, threads and devices only decide
how fast they come.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from clothsim.defaults import DEFAULT_ENCODER, DEFAULT_RUNTIME
from clothsim.encoders.registry import encoder_registry, family_registry
from clothsim.encoders.spec import EncoderSpec, fingerprint_mismatch
from clothsim.errors import StaleStoreError, UnknownEncoderError, UsageError

if TYPE_CHECKING:
    from clothsim.encoders.base import Encoder
    from clothsim.runtimes import NamedRuntime
    from clothsim.runtimes.int8 import Calibration

logger = logging.getLogger(__name__)

RANDOM = "random"

__all__ = ["build_encoder", "build_network", "create_encoder", "ready_spec", "resolve_encoder", "weights_source"]


def weights_source(weights: str | Path | None) -> str | None:
    """What a spec records so the network can be built again: an absolute path, ``"random"`` or
    ``None`` (the official weights)."""
    if weights is None or str(weights) == RANDOM:
        return None if weights is None else RANDOM
    return str(Path(weights).resolve())


def _split(name: str) -> tuple[str, str] | None:
    """``(prefix, spec)`` when ``name`` is a family name, ``None`` for a plain registered name."""
    if name in encoder_registry:
        return None
    prefix, sep, spec = name.partition(":")
    if sep and prefix in family_registry:
        if not spec:
            raise UnknownEncoderError(f"encoder {name!r} needs a spec after '{prefix}:'")
        return prefix, spec
    broken = {**encoder_registry.broken(), **family_registry.broken()}
    if name in broken or prefix in broken:
        raise UsageError(f"encoder {name!r} is installed but failed to load: {broken.get(name) or broken.get(prefix)}")
    known = encoder_registry.names() + [f"{p}:<spec>" for p in family_registry.names()]
    raise UnknownEncoderError(f"unknown encoder {name!r}; known encoders: {', '.join(known)}")


def build_network(name: str, weights: str | Path | None = None, device: str = "cpu") -> "Encoder":
    """The encoder's network as its plug-in builds it (eager torch for the built-ins, so the ``torch``
    extra), with no runtime around it; it records where its weights came from.

    Raises:
        UnknownEncoderError: ``name`` is not registered; the message lists the known names.
        WeightsUnavailableError: no weights could be had; the message says what to download and where.
        MissingDependencyError: the plug-in needs an extra that is not installed.
    """
    family = _split(name)
    if family is None:
        network = encoder_registry.get(name).create(weights, device)
        network.weights_source = weights_source(weights)
    else:
        prefix, spec = family
        network = family_registry.get(prefix).create(spec, weights, device)
        # A family's weights string may be "part=PATH" pairs: recorded as given.
        network.weights_source = None if weights is None else str(weights)
    return network


def ready_spec(name: str, weights: str | Path | None = None) -> EncoderSpec | None:
    """The spec of a model file that is ready to run for ``name`` and ``weights`` (no network built, no
    torch), or ``None`` when the plug-in has none."""
    family = _split(name)
    if family is None:
        plugin = encoder_registry.get(name)
        ready = getattr(plugin, "ready_spec", None)
        return ready(weights) if ready is not None else None
    prefix, spec = family
    ready = getattr(family_registry.get(prefix), "ready_spec", None)
    return ready(spec, weights) if ready is not None else None


def create_encoder(
    name: str = DEFAULT_ENCODER,
    weights: str | Path | None = None,
    device: str = "cpu",
    runtime: str = DEFAULT_RUNTIME,
    threads: int | None = None,
    *,
    precision: str = "fp32",
    calibration: "Calibration | None" = None,
) -> "Encoder":
    """Build a registered encoder, run by a runtime.

    Args:
        name: A name from :func:`clothsim.list_encoders`, or ``family:spec``.
        weights: ``None`` for the official pretrained weights (shipped, or downloaded and cached on first
            use where that needs a download), ``"random"`` for random initialisation, or a path to a local
            state-dict file.
        device: Torch device string; CPU by default.
        runtime: What runs the network: a name from ``clothsim.list_runtimes()`` or ``"auto"`` (ONNX
            Runtime where it can run the encoder, else torch). Every runtime gives the same vectors.
        threads: Compute threads of the runtime (default: every core this process may use).
        precision: ``"fp32"``, or ``"int8"``: the network quantized by ONNX Runtime, calibrated on
            ``calibration``'s photos; offered for the encoders whose plug-in declares it validated.
        calibration: The photos and recipe of an int8 calibration.

    Raises:
        UnknownEncoderError: ``name`` is not registered; the message lists the known names.
        WeightsUnavailableError: no weights could be had; the message says what to download and where.
        MissingDependencyError: the encoder needs an extra that is not installed (the message gives the
            ``pip install`` line).
        UsageError: unknown or unavailable runtime, or int8 where it is not offered.
    """
    from clothsim.runtimes import AUTO, resolve_runtime

    resolve_runtime(runtime)  # before building: a bad or missing runtime should fail at once
    if precision == "int8":
        return _int8_encoder(name, weights, runtime, threads, calibration)
    if precision != "fp32":
        raise UsageError(f"precision must be fp32 or int8, got {precision!r}")
    if runtime in (AUTO, "onnx") and str(device) == "cpu":
        spec = ready_spec(name, weights)
        if spec is not None:
            return build_encoder(spec, runtime=runtime, threads=threads, device=device)
    network = build_network(name, weights, device)
    return build_encoder(network.spec, runtime=runtime, threads=threads, device=device, network=network)


def build_encoder(spec: EncoderSpec, *, runtime: str = DEFAULT_RUNTIME, threads: int | None = None,
                  device: str = "cpu", base_dir: str | Path | None = None,
                  network: "Encoder | None" = None) -> "Encoder":
    """The encoder ``spec`` describes, run by ``runtime``.

    A spec with a model file runs on ONNX Runtime from that file (checked against its SHA-256) with no
    torch. Without one, or on the ``torch`` runtime, the plug-in builds the network (``network`` when
    the caller has it already), which must have exactly the spec's identity.

    Args:
        spec: The identity to build.
        runtime, threads, device: As for :func:`create_encoder`.
        base_dir: The folder a relative model file is in (an index folder).
        network: The already-built network of this spec, if the caller has one.

    Raises:
        StaleStoreError: the network the plug-in builds now is not the spec's (other weights).
        DataError: the spec's model file is missing or damaged.
        UsageError, MissingDependencyError: as for :func:`create_encoder`.
    """
    from clothsim.runtimes import AUTO, NotRunnableError, resolve_runtime

    # A relative file is relative to the folder holding the spec (an index): made absolute here, so the
    # built encoder names files that any process can open. A shipped file stays named as such.
    spec = spec.with_absolute_files(base_dir)
    candidates = resolve_runtime(runtime)
    if runtime == AUTO and str(device) != "cpu":
        candidates = [c for c in candidates if c.executes == "network"] or candidates
    for position, candidate in enumerate(candidates):
        try:
            return _load(candidate, spec, threads, device, network)
        except NotRunnableError as exc:
            if runtime != AUTO or position == len(candidates) - 1:
                raise
            logger.info("runtime %s cannot run %s (%s); trying %s", candidate.name, spec.name, exc,
                        candidates[position + 1].name)
    raise AssertionError("unreachable: resolve_runtime returns at least one runtime")


def _load(candidate: "NamedRuntime", spec: EncoderSpec, threads: int | None, device: str,
          network: "Encoder | None") -> "Encoder":
    if candidate.executes == "model_file" and spec.model_file is not None:
        if network is None and spec.precision == "fp32":
            # The network is built only if a method that needs it is called (never by a search).
            return candidate.load(spec, threads=threads, device=device, network=None,
                                  network_factory=lambda: _network_of(spec, device))  # type: ignore[call-arg]
        return candidate.load(spec, threads=threads, device=device, network=network)
    if network is None:
        network = _network_of(spec, device)
    composite = network.with_parts(lambda part: build_encoder(part.spec, runtime=candidate.name, threads=threads,
                                                              device=device, network=part))
    if composite is not None:
        composite.runtime = candidate.name
        return composite
    if candidate.executes == "model_file":
        from clothsim.runtimes.onnx_export import export_spec

        spec = export_spec(network)
    return candidate.load(spec, threads=threads, device=device, network=network)


def _network_of(spec: EncoderSpec, device: str) -> "Encoder":
    """The plug-in's network for ``spec``, checked to have the spec's identity."""
    if spec.precision != "fp32":
        from clothsim.errors import DataError

        raise DataError(f"{spec.name}: the {spec.precision} model file is the model, and it is missing; "
                        "build the index again with the same --precision")
    network = build_network(spec.name, spec.weights_source, device)
    diff = fingerprint_mismatch(spec.fingerprint(), network.fingerprint())
    if diff:
        details = "; ".join(f"{key}: expected {spec.fingerprint().get(key)!r}, got {network.fingerprint().get(key)!r}"
                            for key in diff)
        raise StaleStoreError(f"{spec.name} built now is not the encoder that was recorded ({details}); pass the "
                              "weights it was built with (--weights PATH)")
    return network


def resolve_encoder(encoder: "str | Encoder", weights: str | Path | None = None, device: str = "cpu",
                    runtime: str = DEFAULT_RUNTIME, threads: int | None = None, *, precision: str = "fp32",
                    calibration: "Calibration | None" = None) -> "Encoder":
    """An encoder from a name (as :func:`create_encoder`) or a built :class:`Encoder`, in ``precision``:
    a built float32 encoder asked for int8 is quantized (exported to a model file first if it has none).
    """
    if isinstance(encoder, str):
        return create_encoder(encoder, weights, device, runtime, threads, precision=precision, calibration=calibration)
    if precision == encoder.spec.precision:
        return encoder
    if precision != "int8":
        raise UsageError(f"an {encoder.spec.precision} encoder cannot be made {precision}; build it again by name")
    return _quantized(encoder, runtime, threads, calibration)


def _int8_encoder(name: str, weights: str | Path | None, runtime: str, threads: int | None,
                  calibration: "Calibration | None") -> "Encoder":
    from clothsim.runtimes import AUTO
    from clothsim.runtimes.int8 import check_int8_offered

    if runtime not in (AUTO, "onnx"):
        raise UsageError(f"--precision int8 runs on the onnx runtime, not {runtime!r}")
    plugin = encoder_registry.get(name) if _split(name) is None else None
    offered = [n for n, p in encoder_registry.items() if getattr(p, "int8_validated", False)]
    check_int8_offered(name, bool(getattr(plugin, "int8_validated", False)), offered)
    return _quantized(create_encoder(name, weights, runtime="onnx", threads=threads), runtime, threads, calibration)


def _quantized(fp32: "Encoder", runtime: str, threads: int | None, calibration: "Calibration | None") -> "Encoder":
    from clothsim.runtimes import AUTO
    from clothsim.runtimes.int8 import quantized_spec

    if runtime not in (AUTO, "onnx"):
        raise UsageError(f"--precision int8 runs on the onnx runtime, not {runtime!r}")
    if calibration is None:
        raise UsageError("--precision int8 needs calibration photos (the catalogue being indexed)")
    spec = fp32.spec
    if spec.model_file is None:
        spec = build_encoder(spec, runtime="onnx", threads=threads, network=fp32).spec
    return build_encoder(quantized_spec(spec, calibration), runtime="onnx", threads=threads)
