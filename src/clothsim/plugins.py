"""One plug-in mechanism for every extension point: Python entry points, loaded lazily.

clothsim's own encoders, runtimes, index backends and catalogue readers are declared in its
``pyproject.toml`` exactly as a third party declares theirs::

    [project.entry-points."clothsim.encoders"]
    my_encoder = "my_package.encoders:MyEncoder"

A group is read the first time something asks for one of its plug-ins. Each entry point names a class
(instantiated with no arguments) or an object implementing that group's protocol. One that fails to
import, to instantiate or to match the protocol is logged with its name and skipped; it never breaks
the others.
"""

from __future__ import annotations

import logging
import threading
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, Iterator, TypeVar

from clothsim.errors import UsageError

logger = logging.getLogger(__name__)

P = TypeVar("P")

ENCODERS = "clothsim.encoders"
ENCODER_FAMILIES = "clothsim.encoder_families"
RUNTIMES = "clothsim.runtimes"
INDEX_BACKENDS = "clothsim.index_backends"
READERS = "clothsim.readers"
ENGINES = "clothsim.engines"
GROUPS = (ENCODERS, ENCODER_FAMILIES, RUNTIMES, ENGINES, INDEX_BACKENDS, READERS)


def declared_names(group: str) -> list[str]:
    """Names declared in an entry-point group, without importing any plug-in (for the CLI's choices)."""
    return sorted({ep.name for ep in entry_points(group=group)})


class PluginRegistry(Generic[P]):
    """The plug-ins of one entry-point group, by name.

    Args:
        group: Entry-point group, e.g. ``"clothsim.encoders"``.
        protocol: A ``runtime_checkable`` protocol every plug-in must satisfy.
        kind: What a plug-in is called in messages ("encoder", "index backend", ...).
    """

    def __init__(self, group: str, protocol: type, kind: str) -> None:
        self.group = group
        self.protocol = protocol
        self.kind = kind
        self._plugins: dict[str, P] = {}
        self._broken: dict[str, str] = {}
        self._in_code: set[str] = set()
        self._loaded = False
        self._lock = threading.Lock()

    # ----- loading ---------------------------------------------------------------------------
    def _entry_points(self) -> list[EntryPoint]:
        return sorted(entry_points(group=self.group), key=lambda ep: ep.name)

    def _load(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            for ep in self._entry_points():
                if ep.name in self._plugins:
                    continue  # registered in code already; the explicit registration wins
                try:
                    self._plugins[ep.name] = self._instantiate(ep.name, ep.load())
                except Exception as exc:  # a third party's bug must not take the others down
                    self._broken[ep.name] = f"{type(exc).__name__}: {exc}"
                    logger.warning("%s plug-in %r (%s) could not be loaded and is skipped: %s",
                                   self.kind, ep.name, ep.value, self._broken[ep.name])
            if not self._plugins and not self._broken:
                logger.error("no %s plug-ins found in entry-point group %r; is clothsim installed "
                             "(pip install -e .) rather than run from a source tree?", self.kind, self.group)
            self._loaded = True

    def _instantiate(self, name: str, obj: object) -> P:
        plugin = obj() if isinstance(obj, type) else obj
        if not isinstance(plugin, self.protocol):
            missing = [attr for attr in _protocol_members(self.protocol) if not hasattr(plugin, attr)]
            raise TypeError(f"{type(plugin).__name__} does not implement {self.protocol.__name__} "
                            f"(missing: {', '.join(missing) or '?'})")
        return plugin  # type: ignore[return-value]

    # ----- registering in code -----------------------------------------------------------------
    def register(self, name: str, plugin: object) -> None:
        """Add a plug-in from code (tests, notebooks); entry points are the way for packages."""
        self._load()
        if name in self._plugins:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._plugins[name] = self._instantiate(name, plugin)
        self._in_code.add(name)

    def unregister(self, name: str) -> None:
        self._plugins.pop(name, None)
        self._in_code.discard(name)

    # ----- looking up ------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Names of the working plug-ins, sorted (loads the group)."""
        self._load()
        return sorted(self._plugins)

    def declared_names(self) -> list[str]:
        """Names declared by entry points or registered, without importing any plug-in (cheap)."""
        return sorted({ep.name for ep in self._entry_points()} | set(self._plugins))

    def broken(self) -> dict[str, str]:
        """Plug-ins that failed to load: name -> the error."""
        self._load()
        return dict(self._broken)

    def get(self, name: str) -> P:
        """The plug-in called ``name``.

        Raises:
            UsageError: no such plug-in (the message lists the known ones), or it failed to load.
        """
        self._load()
        if name in self._plugins:
            return self._plugins[name]
        if name in self._broken:
            raise UsageError(f"{self.kind} {name!r} is installed but failed to load: {self._broken[name]}")
        raise UsageError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or '(none)'}")

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._plugins

    def items(self) -> Iterator[tuple[str, P]]:
        self._load()
        return iter(sorted(self._plugins.items()))

    def reload(self) -> None:
        """Forget what was read from entry points (after installing a plug-in in a running process)."""
        with self._lock:  # what was registered in code stays: no entry point would bring it back
            self._plugins = {n: p for n, p in self._plugins.items() if n in self._in_code}
            self._broken.clear()
            self._loaded = False


def _protocol_members(protocol: type) -> list[str]:
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")}
    return sorted(names)
