"""Runtimes: what runs an encoder's network, kept apart from the model's identity.

An encoder is a model (name, weights, preprocessing: what a store's fingerprint stamps); a runtime runs
it. Every runtime must give the same vectors, so an index built with one is searched with another; a
store records which runtime built it as information only. Runtimes are plug-ins of the
``clothsim.runtimes`` entry-point group.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from clothsim.errors import ClothsimError, UsageError
from clothsim.plugins import RUNTIMES, PluginRegistry

if TYPE_CHECKING:
    from clothsim.encoders.base import Encoder

logger = logging.getLogger(__name__)

AUTO = "auto"


@runtime_checkable
class Runtime(Protocol):
    """Runs encoders.

    Attributes:
        description: One line for ``clothsim encoders --runtimes``.
        priority: ``auto`` takes the available runtime with the highest priority.
    """

    description: str
    priority: int

    def unavailable_reason(self) -> str | None:
        """``None`` when the runtime works here, else why not and how to fix it (a pip line)."""
        ...

    def prepare(self, encoder: "Encoder", threads: int | None = None) -> "Encoder":
        """An encoder giving the same vectors as ``encoder``, run by this runtime (with ``threads``
        compute threads, or the runtime's default)."""
        ...


runtime_registry: PluginRegistry[Runtime] = PluginRegistry(RUNTIMES, Runtime, "runtime")


def list_runtimes() -> list[tuple[str, Runtime, str | None]]:
    """``(name, runtime, unavailable reason or None)`` for every runtime, best first."""
    rows = [(name, rt, rt.unavailable_reason()) for name, rt in runtime_registry.items()]
    return sorted(rows, key=lambda row: -row[1].priority)


def resolve_runtime(name: str) -> list["NamedRuntime"]:
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
                logger.info("runtime %s is not available (%s)", rt_name, reason)
        if not usable:
            raise UsageError("no runtime is available: "
                             + ("; ".join(f"{n}: {r}" for n, _, r in rows) or "none installed"))
        return usable
    runtime = runtime_registry.get(name)
    reason = runtime.unavailable_reason()
    if reason is not None:
        raise UsageError(f"runtime {name!r} is not available: {reason}")
    return [NamedRuntime(name, runtime)]


def run_with(encoder: "Encoder", runtime: str = AUTO, threads: int | None = None) -> "Encoder":
    """``encoder`` handed to ``runtime``. With ``"auto"``, a runtime that cannot take this encoder (no
    network to export, a GPU device, an export that disagrees with torch) is skipped with one log line."""
    candidates = resolve_runtime(runtime)
    for position, candidate in enumerate(candidates):
        try:
            return candidate.prepare(encoder, threads)
        except ClothsimError as exc:
            if runtime != AUTO or position == len(candidates) - 1:
                raise
            logger.info("runtime %s cannot run %s (%s); using %s", candidate.name, encoder.name, exc,
                        candidates[position + 1].name)
    raise AssertionError("unreachable: resolve_runtime returns at least one runtime")


class NamedRuntime:
    """A resolved runtime and the name it is registered under (what a store records)."""

    def __init__(self, name: str, runtime: Runtime) -> None:
        self.name = name
        self.runtime = runtime

    def prepare(self, encoder: "Encoder", threads: int | None = None) -> "Encoder":
        # ``threads`` only when asked for, so a runtime written without the option still works.
        prepared = self.runtime.prepare(encoder) if threads is None else self.runtime.prepare(encoder, threads=threads)
        prepared.runtime = self.name
        return prepared


__all__ = ["AUTO", "NamedRuntime", "Runtime", "list_runtimes", "resolve_runtime", "run_with", "runtime_registry"]
