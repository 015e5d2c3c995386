"""The index backend interface: what search needs from any engine (exact, approximate, a database), and
what a backend plug-in and its callers (the CLI, the web service, :class:`clothsim.SimilarityIndex`)
share: the errors a backend raises, its options as given on the command line and how they are checked,
and where its files live beside the store.

A plug-in implements :class:`IndexBackendPlugin`; the optional hooks it may add are protocols of their
own here (:class:`OptionCheckingPlugin`, :class:`ReachabilityCheckingPlugin`,
:class:`CheckableBackendPlugin`, :class:`StoreOnlyPlugin`), and callers reach them through
:func:`check_plugin_options`, :func:`check_plugin_reachable` and :func:`saves_files`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from clothsim.data.records import CatalogRecord
from clothsim.errors import ClothsimError, UsageError

if TYPE_CHECKING:
    from clothsim.features.store import FeatureStore


@dataclass(frozen=True)
class SearchHit:
    """One result: its rank (1-based), catalogue id, cosine similarity and record; ``group_size`` in a
    search that collapses near-duplicates (how many items of the catalogue this one stands for)."""

    rank: int
    id: int
    score: float
    record: CatalogRecord
    group_size: int | None = None

    def to_dict(self) -> dict:
        row = {"rank": self.rank, "id": self.id, "score": round(float(self.score), 6), **self.record.to_dict()}
        if self.group_size is not None:
            row["group_size"] = self.group_size
        return row


# ----- errors -----------------------------------------------------------------------------------
class BackendIndexError(ClothsimError, RuntimeError):
    """A backend's files are missing, damaged, out of step with the store or from a newer clothsim.

    The message names the file (or database) and says how to rebuild it.
    """


class BackendUnavailable(ClothsimError):  # not an OSError: an `except OSError` must not swallow it
    """A backend's server cannot be reached now. Not damage: nothing to rebuild; the same call may succeed
    once the server is back (``clothsim serve`` answers 503 with ``Retry-After`` meanwhile)."""


# ----- options ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OptionSpec:
    """One backend option: its type, default, whether it is fixed at build time, and what it does."""

    type: type
    default: Any
    build: bool
    help: str


def parse_option_pairs(pairs: Iterable[str] | None) -> dict[str, Any]:
    """``["M=32", "uri=http://h:19530"]`` -> ``{"M": 32, "uri": "http://h:19530"}``.

    Values that read back exactly as an int, a float or true/false become one (``"0123"`` stays a
    string), so options recorded in the manifest have their natural JSON type.

    Raises:
        UsageError: an item without ``=`` or with an empty key.
    """
    options: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"backend option {pair!r} is not KEY=VALUE (e.g. --backend-option efSearch=128)")
        options[key] = _literal(value.strip())
    return options


def _literal(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if str(value) == text:
            return value
    return text


def coerce_options(backend: str, specs: Mapping[str, OptionSpec], given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` checked against ``specs`` and converted to each option's type.

    Raises:
        UsageError: an unknown option (the message lists the known ones) or a value of the wrong kind.
    """
    unknown = sorted(set(given) - set(specs))
    if unknown:
        known = ", ".join(f"{name} ({spec.help})" for name, spec in specs.items())
        raise UsageError(f"{backend} has no option {', '.join(map(repr, unknown))}; known: {known}")
    out: dict[str, Any] = {}
    for name, value in given.items():
        spec = specs[name]
        if value is None:
            out[name] = None
            continue
        try:
            if spec.type is str:
                out[name] = str(value)
            elif spec.type is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError(value)
                out[name] = int(value)
            elif spec.type is bool:
                if not isinstance(value, bool):
                    raise ValueError(value)
                out[name] = value
            else:
                out[name] = spec.type(value)
        except (TypeError, ValueError):
            raise UsageError(f"{backend} option {name} must be {spec.type.__name__}, got {value!r}") from None
    return out


def with_defaults(specs: Mapping[str, OptionSpec], given: Mapping[str, Any]) -> dict[str, Any]:
    """Every option, ``given`` first, else its default."""
    return {name: spec.default if given.get(name) is None else given[name] for name, spec in specs.items()}


def check_positive(backend: str, options: Mapping[str, Any], names: Sequence[str], minimum: int = 1) -> None:
    """Refuse int options below ``minimum`` (``None`` means automatic and passes)."""
    for name in names:
        value = options.get(name)
        if value is not None and value < minimum:
            raise UsageError(f"{backend} option {name} must be at least {minimum}, got {value}")


def check_build_options_match(backend: str, store: "FeatureStore", specs: Mapping[str, OptionSpec],
                              given: Mapping[str, Any], built: Mapping[str, Any]) -> None:
    """At open time, a build option that differs from what the index was built with is refused."""
    for name, value in given.items():
        if specs[name].build and value is not None and built.get(name) != value:
            raise UsageError(
                f"{name} is fixed when the {backend} index is built (this one was built with "
                f"{name}={built.get(name)!r}); {rebuild_hint(store, backend, f'{name}={value}')}")


def rebuild_hint(store: "FeatureStore", backend: str, option: str | None = None) -> str:
    """How to rebuild a backend's files from the store's vectors: the same ``clothsim index`` command (it
    rebuilds a backend whose files are missing or damaged, or whose build options changed, without
    encoding anything again)."""
    extra = f" --backend-option {option}" if option else ""
    return (f"rebuild it with `clothsim index DATA --out {store.root} --backend {backend}{extra}` (it rebuilds the "
            f"{backend} files from the stored vectors; or clothsim.index.build_index(store, {backend!r}) in Python)")


def backend_dir(store: "FeatureStore", name: str) -> Path:
    """The folder where backend ``name`` keeps its files beside ``store``."""
    return Path(store.root) / "backends" / name


# ----- the protocols ----------------------------------------------------------------------------
@runtime_checkable
class IndexBackend(Protocol):
    """An open index: top-k by cosine similarity over a store's vectors, with add and delete by id.

    Everything :class:`clothsim.SimilarityIndex`, the CLI and the web service do with an index goes
    through these methods; they never hold a concrete backend class.
    """

    name: str

    def __len__(self) -> int:
        """Live (not deleted) items."""
        ...

    def categories(self) -> dict[str, int]:
        """Live item count per category, sorted by category."""
        ...

    def search(
        self,
        queries: np.ndarray,
        k: int,
        category: str | Sequence[str] | None = None,
        exclude_ids: Sequence[int] | None = None,
    ) -> list[list[SearchHit]]:
        """For each L2-normalised query row, its top ``k`` hits, best first.

        ``category`` restricts results to one or several categories; ``exclude_ids`` gives, per query,
        an id to leave out (e.g. the query item itself) or ``-1``.
        """
        ...

    def add(
        self, vectors: np.ndarray, records: Sequence[CatalogRecord], failures: Sequence[dict[str, str]] = ()
    ) -> np.ndarray:
        """Add items without a rebuild; returns their new ids. ``failures`` (``{"path", "reason"}``
        of files that could not be encoded) join the index's failure list in the same commit."""
        ...

    def delete(self, ids: Sequence[int]) -> int:
        """Remove items by id; returns how many were present."""
        ...

    def save(self) -> None:
        """Make every change so far durable beside the store (a no-op where changes are written at once)."""
        ...

    def refresh(self) -> None:
        """Catch up with a store that changed outside this backend (rows appended, ids tombstoned, e.g.
        by an incremental ``clothsim index`` sync), without a rebuild where the engine allows it."""
        ...


@runtime_checkable
class IndexBackendPlugin(Protocol):
    """A plug-in of the ``clothsim.index_backends`` group: builds and reopens one kind of index.

    A backend keeps whatever it needs beyond the store's vectors (a graph, a database file) under
    ``store.root / "backends" / <its name>``, and the store's manifest records which backend was built,
    with its options, so :func:`clothsim.index.open_index` reopens it without being told.

    Optional hooks, each a protocol of its own so that a plug-in without it still loads:

    * ``check_options(options) -> dict`` (:class:`OptionCheckingPlugin`): refuse bad options before any
      work, e.g. before hours of encoding;
    * ``check_reachable(options) -> None`` (:class:`ReachabilityCheckingPlugin`): connect once to a server
      the options name;
    * ``check_saved(store, full=...) -> list[str]`` (:class:`CheckableBackendPlugin`): check the saved
      files without serving them (``clothsim verify``);
    * ``store_only = True`` (:class:`StoreOnlyPlugin`): the backend saves nothing beyond the store.
    """

    description: str

    def build(self, store: "FeatureStore", **options: Any) -> IndexBackend:
        """Build the index over every vector in ``store`` and save it; returns it open."""
        ...

    def open(self, store: "FeatureStore", **options: Any) -> IndexBackend:
        """Reopen an index built earlier by :meth:`build` over ``store``."""
        ...


@runtime_checkable
class NeighbourSearch(Protocol):
    """An optional extra of an open :class:`IndexBackend`: the nearest live items as ids and scores alone,
    no records made (what a scan of the whole catalogue for near-duplicates asks, once per item)."""

    def neighbours(self, queries: np.ndarray, k: int,
                   exclude_ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, scores)``, each ``(len(queries), k)``, best first; padded with id ``-1`` and score
        ``-inf`` where fewer than ``k`` items are eligible."""
        ...


@runtime_checkable
class WarmableBackend(Protocol):
    """An optional extra of an open :class:`IndexBackend`: load now what the first queries would load
    lazily (``clothsim serve`` calls it before taking requests, so no early request pays for it)."""

    def warm(self) -> None:
        ...


@runtime_checkable
class CheckableBackendPlugin(Protocol):
    """An optional extra of an :class:`IndexBackendPlugin`: checking its saved files without serving them.

    ``clothsim verify`` calls it for every backend saved in an index folder; a plug-in without it is
    listed as not checked.
    """

    def check_saved(self, store: "FeatureStore", *, full: bool = True) -> list[str]:
        """Problems found in what the backend saved over ``store`` (empty when intact). ``full`` reads
        whole files (checksums); without it, only records, sizes and presence are checked."""
        ...


@runtime_checkable
class OptionCheckingPlugin(Protocol):
    """An optional extra of an :class:`IndexBackendPlugin`: checking options without touching any file."""

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` checked and converted to their types.

        Raises:
            UsageError: an unknown option or a value of the wrong kind.
        """
        ...


@runtime_checkable
class ReachabilityCheckingPlugin(Protocol):
    """An optional extra of an :class:`IndexBackendPlugin`: whether a server its options name answers."""

    def check_reachable(self, options: dict[str, Any]) -> None:
        """Connect once now; raise :class:`BackendUnavailable` (or another :class:`ClothsimError`) if the
        server cannot be reached. A backend without a server does nothing."""
        ...


@runtime_checkable
class StoreOnlyPlugin(Protocol):
    """An optional extra of an :class:`IndexBackendPlugin`: ``store_only`` true says the backend saves
    nothing beyond the store (the exact backend), so there is no folder of its own to check."""

    store_only: bool


def check_plugin_options(plugin: IndexBackendPlugin, options: Mapping[str, Any]) -> None:
    """Refuse bad ``options`` for ``plugin`` now, where the plug-in can tell (:class:`OptionCheckingPlugin`).

    Raises:
        UsageError: an unknown option or a value of the wrong kind.
    """
    if isinstance(plugin, OptionCheckingPlugin):
        plugin.check_options(dict(options))


def check_plugin_reachable(plugin: IndexBackendPlugin, options: Mapping[str, Any]) -> None:
    """Connect once to the server ``options`` name, where the plug-in has one
    (:class:`ReachabilityCheckingPlugin`).

    Raises:
        ClothsimError: the server cannot be reached.
    """
    if isinstance(plugin, ReachabilityCheckingPlugin):
        plugin.check_reachable(dict(options))


def saves_files(plugin: IndexBackendPlugin) -> bool:
    """Whether ``plugin`` keeps files of its own under ``backends/<name>`` (all but :class:`StoreOnlyPlugin`)."""
    return not (isinstance(plugin, StoreOnlyPlugin) and plugin.store_only)
