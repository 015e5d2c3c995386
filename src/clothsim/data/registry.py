"""Catalogue readers by format name: plug-ins of the ``clothsim.readers`` entry-point group.

A reader says whether it recognises a source (``detect``) and reads it into records (``read``). With
``format="auto"``, readers are asked in order of ``detect_priority``, highest first; the plain folder
reader, which takes any folder, has priority 0 and so comes last.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from clothsim.plugins import READERS, PluginRegistry

if TYPE_CHECKING:
    from clothsim.data.records import CatalogRecord


@runtime_checkable
class CatalogReader(Protocol):
    """One catalogue format.

    Attributes:
        description: One line for ``clothsim data --formats`` and the docs.
        detect_priority: Order in which auto-detection asks readers (highest first).
    """

    description: str
    detect_priority: int

    def detect(self, source: str) -> bool:
        """Whether ``source`` (a path, or a name such as ``fashion-mnist``) is in this format."""
        ...

    def read(self, source: str, **options: Any) -> list["CatalogRecord"]:
        """The records of ``source``; unknown options raise ``UsageError``."""
        ...


reader_registry: PluginRegistry[CatalogReader] = PluginRegistry(READERS, CatalogReader, "catalogue reader")


def list_formats() -> list[tuple[str, str]]:
    """``(format name, description)`` of every working reader."""
    return [(name, reader.description) for name, reader in reader_registry.items()]
