"""Extraction engines: what decodes and encodes a catalogue's photos for an index.

``local`` decodes in threads of this process while the runtime encodes batches; ``ray`` spreads both
over a Ray cluster. Every engine yields the same finished shards (:class:`EncodedShard`) to the same
writer (:func:`clothsim.features.extract_features`), so an index is the same whoever built it. Engines
are plug-ins of the ``clothsim.engines`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

from clothsim.defaults import DEFAULT_ENGINE
from clothsim.errors import UsageError
from clothsim.plugins import ENGINES, PluginRegistry

if TYPE_CHECKING:
    import numpy as np

    from clothsim.data.records import CatalogRecord
    from clothsim.encoders.base import Encoder

@dataclass
class EncodedShard:
    """One finished shard: its number, the records that decoded (by catalogue index, in order), their
    outputs stacked, and ``{"path", "reason"}`` for those that did not."""

    shard: int
    indices: list[int]
    outputs: np.ndarray | None
    failures: list[dict[str, str]]


class DecodePhoto:
    """Reads one catalogue photo and turns it into the encoder's input, the same way on every engine.

    Picklable (a Ray actor or a worker process gets a copy). A photo that cannot serve as an image
    comes back as its reason, never as an exception, so one bad file never stops a batch.

    Args:
        transform: The encoder's ``transform``.
        use_bbox: Crop to the record's box where it has one.
        min_side: Let JPEGs decode at a reduced scale down to this short side (the encoder's
            ``decode_min_side``).
    """

    def __init__(self, transform: Callable[[Any], Any], use_bbox: bool = True, min_side: int | None = None) -> None:
        self.transform = transform
        self.use_bbox = use_bbox
        self.min_side = min_side

    def __call__(self, path: str, bbox: tuple[int, int, int, int] | None = None) -> tuple[Any, str | None]:
        """``(input, None)``, or ``(None, reason)`` for a file that cannot be used."""
        from clothsim.images import UNUSABLE_IMAGE_ERRORS, load_image

        try:
            image = load_image(path, bbox=bbox if self.use_bbox else None, min_side=self.min_side)
        except UNUSABLE_IMAGE_ERRORS as exc:
            return None, str(exc)
        return self.transform(image), None


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
    ) -> Iterator[EncodedShard]:
        """Shards ``0 .. ceil(len(records) / shard_size) - 1`` of ``records``, each once, in order:
        the catalogue positions that decoded, their vectors, and ``{"path", "reason"}`` of the others."""
        ...


@runtime_checkable
class CheckableEngine(Protocol):
    """An optional extra of an engine: fail now, before any work, if it cannot run with these options
    (e.g. no cluster at the address given); raises :class:`~clothsim.errors.UsageError`."""

    def check(self, **options: Any) -> None:
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

    def check(self) -> None:
        if isinstance(self.engine, CheckableEngine):
            self.engine.check(**self.options)

    def iter_shards(self, records: Sequence["CatalogRecord"], shard_size: int, encoder: "Encoder",
                    **kwargs: Any) -> Iterator[EncodedShard]:
        return self.engine.iter_shards(records, shard_size, encoder, **kwargs, **self.options)


def configure_engine(name: str, **options: Any) -> ExtractionEngine:
    """The engine called ``name`` with ``options`` bound (``None`` values dropped), checked to run here
    as configured (a Ray address is reached now, before any work).

    Raises:
        UsageError: unknown or unavailable engine, or it cannot run as configured.
    """
    engine = resolve_engine(name)
    options = {key: value for key, value in options.items() if value is not None}
    configured = ConfiguredEngine(engine, **options)
    configured.check()
    return configured


__all__ = ["DEFAULT_ENGINE", "ENGINES", "CheckableEngine", "ConfiguredEngine", "DecodePhoto", "EncodedShard", "ExtractionEngine",
           "configure_engine", "engine_registry", "resolve_engine"]
