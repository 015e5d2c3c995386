"""Runtimes: what executes an encoder, kept apart from what the encoder is.

What the vectors are (weights, preprocessing, precision) is the encoder's identity, an
:class:`~clothsim.encoders.spec.EncoderSpec`; a runtime only executes it. The ``onnx`` runtime runs the
spec's model file in ONNX Runtime and needs no torch; the ``torch`` runtime runs the network that the
encoder's plug-in builds in eager torch (the ``torch`` extra). Every runtime gives the same vectors, so
an index built with one is searched with another; a store records which runtime built it as
information only. Runtimes are plug-ins of the ``clothsim.runtimes`` entry-point group; the one
factory that picks a runtime and hands it what it needs is :func:`clothsim.encoders.build_encoder`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Protocol, runtime_checkable

from clothsim.errors import UsageError
from clothsim.plugins import RUNTIMES, PluginRegistry

if TYPE_CHECKING:
    from clothsim.encoders.base import Encoder
    from clothsim.encoders.spec import EncoderSpec

logger = logging.getLogger(__name__)

AUTO = "auto"


class NotRunnableError(UsageError):
    """This runtime cannot execute this encoder here (no model file to run, a GPU device, int8 on
    torch); with ``auto`` the next runtime is tried."""


@runtime_checkable
class Runtime(Protocol):
    """Executes encoders.

    Attributes:
        description: One line for ``clothsim encoders --runtimes``.
        priority: ``auto`` tries available runtimes from the highest priority down.
        executes: What the runtime needs to run an encoder: ``"model_file"`` (the spec's model file,
            e.g. ONNX) or ``"network"`` (the encoder object its plug-in builds, e.g. a torch module).
    """

    description: str
    priority: int
    executes: str

    def unavailable_reason(self) -> str | None:
        """``None`` when the runtime works here, else why not and how to fix it (a pip line)."""
        ...

    def load(self, spec: "EncoderSpec", *, threads: int | None = None, device: str = "cpu",
             network: "Encoder | None" = None, network_factory: "Callable[[], Encoder] | None" = None) -> "Encoder":
        """An encoder executing ``spec``: from its (resolved, absolute) model file, or from ``network``,
        the encoder its plug-in built. ``network_factory`` builds that network on demand, for the
        methods that only the network offers. Raises :class:`NotRunnableError` when it cannot."""
        ...


runtime_registry: PluginRegistry[Runtime] = PluginRegistry(RUNTIMES, Runtime, "runtime")


def list_runtimes() -> list[tuple[str, Runtime, str | None]]:
    """``(name, runtime, unavailable reason or None)`` for every runtime, best first."""
    rows = [(name, rt, rt.unavailable_reason()) for name, rt in runtime_registry.items()]
    return sorted(rows, key=lambda row: -row[1].priority)


class NamedRuntime:
    """A resolved runtime and the name it is registered under (what a store records)."""

    def __init__(self, name: str, runtime: Runtime) -> None:
        self.name = name
        self.runtime = runtime

    @property
    def executes(self) -> str:
        return self.runtime.executes

    def load(self, spec: "EncoderSpec", *, threads: int | None = None, device: str = "cpu",
             network: "Encoder | None" = None, network_factory: "Callable[[], Encoder] | None" = None) -> "Encoder":
        extra = {"network_factory": network_factory} if network_factory is not None else {}
        encoder = self.runtime.load(spec, threads=threads, device=device, network=network, **extra)
        encoder.runtime = self.name
        return encoder


def resolve_runtime(name: str) -> list[NamedRuntime]:
    """The runtimes to try, in order: just ``name``, or for ``"auto"`` every available one, best first.

    Raises:
        UsageError: unknown name, or the runtime cannot run here (the message says how to fix that).
    """
    if name == AUTO:
        rows = list_runtimes()
        usable = []
        for rt_name, rt, reason in rows:
            if reason is None:
                usable.append(NamedRuntime(rt_name, rt))
            else:
                logger.debug("runtime %s is not available (%s)", rt_name, reason)
        if not usable:
            raise UsageError("no runtime is available: "
                             + ("; ".join(f"{n}: {r}" for n, _, r in rows) or "none installed"))
        return usable
    runtime = runtime_registry.get(name)
    reason = runtime.unavailable_reason()
    if reason is not None:
        raise UsageError(f"runtime {name!r} is not available: {reason}")
    return [NamedRuntime(name, runtime)]


def default_threads() -> int:
    """The cores this process may run on (what a runtime uses unless told otherwise)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


__all__ = ["AUTO", "NamedRuntime", "NotRunnableError", "Runtime", "default_threads",
           "list_runtimes", "resolve_runtime", "runtime_registry"]
