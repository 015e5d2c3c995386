"""Index backends by name: plug-ins of the ``clothsim.index_backends`` entry-point group.

The backend an index was built with is recorded once, in its store's manifest (``index_backend`` and
``index_options``), by :func:`build_index`; :func:`open_index` reopens it from that record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clothsim.defaults import DEFAULT_INDEX_BACKEND
from clothsim.index.base import IndexBackend, IndexBackendPlugin
from clothsim.plugins import INDEX_BACKENDS, PluginRegistry

if TYPE_CHECKING:
    from clothsim.features.store import FeatureStore

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
