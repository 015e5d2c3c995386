"""Extraction engines: what decodes and encodes a catalogue's photos for an index.

``local`` decodes in worker processes of this machine and encodes in this process; ``ray`` spreads
both over a Ray cluster. Every engine yields the same finished shards to the same writer
(:func:`clothsim.features.extract_features`), so an index is the same whoever built it. Engines are
plug-ins of the ``clothsim.engines`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from clothsim.errors import UsageError
from clothsim.plugins import ENGINES, PluginRegistry

if TYPE_CHECKING:
    from clothsim.data.records import CatalogRecord
    from clothsim.encoders.base import Encoder
    from clothsim.features.extract import EncodedShard

DEFAULT_ENGINE = "local"


@runtime_checkable
class ExtractionEngine(Protocol):
    """Encodes records shard by shard.

    Attributes:
        description: One line for ``clothsim plugins``.
    """

    description: str

    def unavailable_reason(self) -> str | None:
        """``None`` when the engine can run here, else why not and how to fix it (a pip line)."""
        ...

    def iter_shards(
        self,
        records: Sequence["CatalogRecord"],
        shard_size: int,
        encoder: "Encoder",
        *,
        batch_size: int,
        num_workers: int,
        use_bbox: bool,
        progress: bool,
        **options: Any,
    ) -> Iterator["EncodedShard"]:
        """Shards ``0 .. ceil(len(records) / shard_size) - 1`` of ``records``, each once, in order:
        the catalogue positions that decoded, their vectors, and ``{"path", "reason"}`` of the others."""
        ...


engine_registry: PluginRegistry[ExtractionEngine] = PluginRegistry(ENGINES, ExtractionEngine, "extraction engine")


def resolve_engine(name: str) -> ExtractionEngine:
    """The engine called ``name``, checked to run here.

    Raises:
        UsageError: unknown engine, or it cannot run here (the message gives the pip line).
    """
    engine = engine_registry.get(name)
    reason = engine.unavailable_reason()
    if reason is not None:
        raise UsageError(f"engine {name!r} is not available: {reason}")
    return engine


class ConfiguredEngine:
    """An engine with its options bound (``ray_address``, ``actors``, ...), passed on to every call."""

    def __init__(self, engine: ExtractionEngine, **options: Any) -> None:
        self.engine = engine
        self.options = options
        self.description = engine.description

    def unavailable_reason(self) -> str | None:
        return self.engine.unavailable_reason()

    def iter_shards(self, records: Sequence["CatalogRecord"], shard_size: int, encoder: "Encoder",
                    **kwargs: Any) -> Iterator["EncodedShard"]:
        return self.engine.iter_shards(records, shard_size, encoder, **kwargs, **self.options)


def configure_engine(name: str, **options: Any) -> ExtractionEngine:
    """The engine called ``name`` with ``options`` bound (``None`` values dropped), checked to run here."""
    engine = resolve_engine(name)
    options = {key: value for key, value in options.items() if value is not None}
    return ConfiguredEngine(engine, **options) if options else engine


__all__ = ["DEFAULT_ENGINE", "ENGINES", "ConfiguredEngine", "ExtractionEngine", "configure_engine",
           "engine_registry", "resolve_engine"]
