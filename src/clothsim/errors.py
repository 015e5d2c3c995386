"""Exceptions that callers may want to catch; each message names the file, field or option at fault."""


class ClothsimError(Exception):
    """Base class of every error clothsim raises on purpose."""


class AnnotationFormatError(ClothsimError, ValueError):
    """A catalogue or annotation file is malformed; the message names the file and line."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line


class UsageError(ClothsimError, ValueError):
    """The command or call was asked for something that does not exist (an unknown encoder, backend,
    runtime or format, an option out of range); the CLI exits with 2, as for any bad usage."""


class DataError(ClothsimError, ValueError):
    """The input data cannot be used as asked (an empty split, a catalogue with no images of a kind)."""


class UnknownEncoderError(UsageError, KeyError):
    """An encoder name is not registered; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class WeightsUnavailableError(ClothsimError, RuntimeError):
    """Pretrained weights are neither cached, downloadable, nor given as a local file."""


class StaleStoreError(ClothsimError, RuntimeError):
    """A feature store was made by another encoder, weights or preprocessing than the one asked for."""


class EmptyCatalogError(ClothsimError, ValueError):
    """There is nothing to index or search."""


class MissingDependencyError(ClothsimError, ImportError):
    """A feature needs an optional dependency that is not installed; the message gives the exact
    ``pip install`` line that adds it."""
