"""Index backends by name: plug-ins of the ``clothsim.index_backends`` entry-point group.

The backend an index was built with is recorded once, in its store's manifest (``index_backend`` and
``index_options``), by :func:`build_index`; :func:`open_index` reopens it from that record.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clothsim.defaults import DEFAULT_INDEX_BACKEND
from clothsim.errors import ClothsimError
from clothsim.index.base import (
    BackendIndexError,
    CheckableBackendPlugin,
    IndexBackend,
    IndexBackendPlugin,
    saves_files,
)
from clothsim.plugins import INDEX_BACKENDS, PluginRegistry

if TYPE_CHECKING:
    from clothsim.features.store import FeatureStore

logger = logging.getLogger(__name__)

backend_registry: PluginRegistry[IndexBackendPlugin] = PluginRegistry(
    INDEX_BACKENDS, IndexBackendPlugin, "index backend")


def list_backends() -> list[tuple[str, str]]:
    """``(name, description)`` of every working backend."""
    return [(name, plugin.description) for name, plugin in backend_registry.items()]


def build_index(store: "FeatureStore", backend: str = DEFAULT_INDEX_BACKEND, **options: Any) -> IndexBackend:
    """Build ``backend`` over ``store``, record it in the store's manifest, and return it open.

    Raises:
        UsageError: unknown backend (the message lists the known ones).
    """
    plugin = backend_registry.get(backend)  # before any work: a typo fails at once
    index = plugin.build(store, **options)
    index.save()
    store.commit(index_backend=backend, index_options=dict(options))
    return index


def open_index(store: "FeatureStore", backend: str | None = None, **options: Any) -> IndexBackend:
    """Open the index over ``store`` with the backend its manifest records (or ``backend``).

    Stores that record no backend (feature caches, older indexes) open with the exact backend, which
    needs nothing beyond the store. Options given here override the recorded ones.
    """
    recorded = store.manifest.get("index_backend") or DEFAULT_INDEX_BACKEND
    name = backend or recorded
    if name == recorded:
        options = {**store.manifest.get("index_options", {}), **options}
    return backend_registry.get(name).open(store, **options)


def sync_index(store: "FeatureStore", backend: str = DEFAULT_INDEX_BACKEND, options: dict[str, Any] | None = None,
               *, rebuild: bool = False) -> IndexBackend:
    """Bring ``backend`` over ``store`` up to date after ``clothsim index`` wrote the store, and save it.

    The backend is built afresh when ``rebuild`` (the store was rebuilt), when the store records another
    backend or other options, or when its saved files are missing, damaged or out of step with the
    store (so that the command a damage message names repairs it). Otherwise it is reopened, its files
    checked whole, the rows it does not cover added and the result saved: an index whose last save was
    interrupted is saved now, not caught up in memory by every later open.

    Raises:
        BackendUnavailable: a server backend cannot be reached (nothing is rebuilt for that).
    """
    options = dict(options or {})
    recorded = (store.manifest.get("index_backend"), store.manifest.get("index_options", {}))
    if rebuild or recorded != (backend, options):
        return build_index(store, backend, **options)
    try:
        index = open_index(store)
        verify = getattr(index, "verify", None)
        if verify is not None:
            verify()
    except BackendIndexError as exc:
        logger.warning("%s; rebuilding the %s index from the stored vectors", exc, backend)
        _discard_local_files(store, backend)
        return build_index(store, backend, **options)
    index.refresh()
    index.save()
    return index


def _discard_local_files(store: "FeatureStore", backend: str) -> None:
    """Remove a damaged backend's folder before it is rebuilt: everything in it is derived from the store,
    and damage to an engine's own bookkeeping (a Milvus Lite database's alias file, say) can make it
    refuse to build anything new beside it. Kept when it points at a server's collection instead."""
    import json

    from clothsim.fileio import remove_path

    folder = Path(store.root) / "backends" / backend
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = {}
    if isinstance(state, dict) and state.get("uri") and not str(state["uri"]).endswith(".db"):
        return
    if folder.is_dir():
        remove_path(folder)


@dataclass
class BackendCheck:
    """What :func:`check_backends` found for one backend saved in an index folder."""

    name: str
    folder: Path
    checked: bool  # False: no plug-in of that name, or the plug-in cannot check its files
    problems: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def check_backends(store: "FeatureStore", full: bool = True) -> list[BackendCheck]:
    """Check every backend saved over ``store``: the one its manifest records, and any other folder
    under ``backends/`` (built by ``clothsim evaluate --backend``, say). A backend whose plug-in says it
    saves nothing beyond the store (:class:`~clothsim.index.base.StoreOnlyPlugin`, the exact one) has no
    folder to check: the store itself is checked by :meth:`FeatureStore.verify`."""
    root = Path(store.root) / "backends"
    names = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    recorded = store.manifest.get("index_backend")
    if recorded and (recorded not in backend_registry or saves_files(backend_registry.get(recorded))):
        names.add(recorded)  # a recorded backend whose folder vanished is a problem, not nothing
    checks = []
    for name in sorted(names):
        check = BackendCheck(name, root / name, checked=False)
        if name not in backend_registry:
            check.note = f"no index backend plug-in named {name!r} is installed; not checked"
        else:
            plugin = backend_registry.get(name)
            if isinstance(plugin, CheckableBackendPlugin):
                try:
                    check.problems = list(plugin.check_saved(store, full=full))
                    check.checked = True
                except ClothsimError as exc:  # e.g. a Milvus server that cannot be reached: not damage
                    check.note = f"not checked: {exc}"
            else:
                check.note = f"the {name} plug-in cannot check its files; not checked"
        checks.append(check)
    return checks
