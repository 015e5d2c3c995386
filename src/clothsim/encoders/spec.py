"""The encoder identity: one value that says everything that decides an encoder's vectors.

An :class:`EncoderSpec` names the encoder (family and name), its weights (an id that changes with them,
and where they were read from), its preprocessing, its precision, and the model file a runtime executes
with that file's SHA-256. An encoder with a text tower (a CLIP-family model) also says so (``text``) and
names the further files it needs to encode text (:class:`ModelFile`: the text tower's ONNX file and its
tokenizer), each with its SHA-256, so an index folder keeps them beside the image model. Index folders record it, Ray workers rebuild from it, and
:func:`clothsim.encoders.build_encoder` is the one factory that turns it into a working encoder.

What does *not* belong here is how fast the vectors come: the runtime, its threads and the device are
arguments of the factory, because every runtime gives the same vectors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from clothsim.encoders.preprocessing import Preprocessing
from clothsim.errors import DataError

#: Model files shipped inside the package are named ``package:<file>`` in a spec.
PACKAGED = "package:"
PRECISIONS = ("fp32", "int8")
#: The roles of the further files of an encoder with a text tower.
TEXT_MODEL, TOKENIZER = "text_model", "tokenizer"
#: The fingerprint keys every encoder has; the rest of a fingerprint is the spec's ``identity``.
_BASE_KEYS = ("encoder", "weights", "dim", "preprocessing")
_INT8_KEYS = ("precision", "quantized_sha256")


def fingerprint_mismatch(expected: Mapping[str, Any], found: Mapping[str, Any]) -> list[str]:
    """Names of the fingerprint fields that decide comparability and differ (empty: the vectors of the
    two are comparable)."""
    # Compare as stored: JSON turns tuples into lists.
    expected, found = json.loads(json.dumps(expected)), json.loads(json.dumps(found))
    return [key for key in _BASE_KEYS if expected.get(key) != found.get(key)]


def packaged_models_dir() -> Path:
    """The folder of the ONNX models shipped with clothsim (package data)."""
    return Path(__file__).resolve().parents[1] / "assets" / "models"


def resolve_file(name: str, base_dir: str | Path | None = None) -> Path:
    """Where a file named in a spec is: the package's models folder (``package:<file>``), ``base_dir``
    for a relative path (the folder holding the spec), or the absolute path itself.

    Raises:
        DataError: a relative name and no folder to find it in.
    """
    if name.startswith(PACKAGED):
        return packaged_models_dir() / name[len(PACKAGED):]
    path = Path(name)
    if not path.is_absolute():
        if base_dir is None:
            raise DataError(f"model file {name} is relative, and no folder was given to find it in")
        path = Path(base_dir) / path
    return path


@dataclass(frozen=True)
class ModelFile:
    """A further file an encoder needs beside its image model, checked by its SHA-256 like the model.

    Attributes:
        role: What the file is for: :data:`TEXT_MODEL` (the text tower, an ONNX file that maps token ids
            to vectors) or :data:`TOKENIZER` (a ``tokenizers`` JSON file).
        file: Where it is, with the conventions of :attr:`EncoderSpec.model_file`.
        sha256: Its SHA-256; a file with another hash is refused.
    """

    role: str
    file: str
    sha256: str

    def path(self, base_dir: str | Path | None = None) -> Path:
        return resolve_file(self.file, base_dir)

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "file": self.file, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelFile":
        return cls(role=str(data["role"]), file=str(data["file"]), sha256=str(data["sha256"]))


@dataclass(frozen=True)
class EncoderSpec:
    """Everything that decides an encoder's vectors.

    Attributes:
        name: Registry name; families carry their spec (``flip:vgg16``, ``tuned:/abs/model``).
        dim: Size of the vectors.
        weights_id: Changes whenever the weights do: a file's SHA-256 prefix, a torchvision tag,
            ``"random"``; for int8, it also carries the quantized file's hash.
        preprocessing: How a photo becomes the network input (``None`` for an encoder made of parts
            with their own, an ensemble).
        precision: ``"fp32"`` or ``"int8"`` (the model file is then the quantized network, and it is
            part of the identity).
        weights_source: Where the weights were read from, so the network can be built again in torch:
            ``None`` (official), ``"random"``, an absolute path, or a family's weights string.
        model_file: The ONNX file a runtime executes, if there is one: ``package:<file>`` (shipped with
            clothsim), an absolute path, or a path relative to the folder that holds the spec (an index
            folder's ``models/...``).
        model_sha256: SHA-256 of ``model_file``; a file with another hash is refused.
        identity: What else a family adds to the identity (GeM's ``p``, a checkpoint's hash, an
            ensemble's parts), as JSON values.
        text: The text tower's settings, for an encoder whose image vectors share a space with text
            vectors (``clean``: how text is normalised before tokenizing, ``context_length``); ``None``
            for an image-only encoder. The vectors' weights id covers both towers.
        files: The further files the encoder needs (its text tower and tokenizer), each with its hash.
    """

    name: str
    dim: int
    weights_id: str
    preprocessing: Preprocessing | None = None
    precision: str = "fp32"
    weights_source: str | None = None
    model_file: str | None = None
    model_sha256: str | None = None
    identity: Mapping[str, Any] = field(default_factory=dict, hash=False)
    text: Mapping[str, Any] | None = field(default=None, hash=False)
    files: tuple[ModelFile, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", tuple(self.files))
        roles = [f.role for f in self.files]
        if len(set(roles)) != len(roles):
            raise ValueError(f"each file role may appear once, got {roles}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if (self.model_file is None) != (self.model_sha256 is None):
            raise ValueError("model_file and model_sha256 go together")
        if self.precision == "int8" and self.model_file is None:
            raise ValueError("an int8 encoder is its quantized model file; model_file is required")
        if self.dim < 1:
            raise ValueError(f"dim must be positive, got {self.dim}")

    # ----- what a store is stamped with ---------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        """What makes two encoders' vectors comparable; stamped on every feature store."""
        fp: dict[str, Any] = {
            "encoder": self.name,
            "weights": self.weights_id,
            "dim": int(self.dim),
            "preprocessing": self.preprocessing.to_dict() if self.preprocessing is not None else None,
            **self.identity,
        }
        if self.precision == "int8":
            fp["precision"] = "int8"
            fp["quantized_sha256"] = self.model_sha256
        return fp

    @classmethod
    def from_fingerprint(cls, fingerprint: Mapping[str, Any], weights_source: str | None = None,
                         model_file: str | None = None, model_sha256: str | None = None) -> "EncoderSpec":
        """The spec an encoder with this fingerprint has (e.g. an index folder written before specs were
        recorded, or an encoder that only says its fingerprint)."""
        pre = fingerprint.get("preprocessing")
        precision = "int8" if fingerprint.get("precision") == "int8" else "fp32"
        if precision == "int8":
            model_sha256 = fingerprint.get("quantized_sha256", model_sha256)
        return cls(
            name=str(fingerprint["encoder"]),
            dim=int(fingerprint["dim"]),
            weights_id=str(fingerprint["weights"]),
            preprocessing=Preprocessing.from_dict(pre) if pre is not None else None,
            precision=precision,
            weights_source=weights_source,
            model_file=model_file,
            model_sha256=model_sha256 if model_file is not None else None,
            identity={k: v for k, v in fingerprint.items() if k not in _BASE_KEYS + _INT8_KEYS},
        )

    # ----- files -----------------------------------------------------------------------------------------
    def with_model(self, model_file: str | Path, sha256: str) -> "EncoderSpec":
        """The same identity, executed from another copy of its model file."""
        return replace(self, model_file=str(model_file), model_sha256=sha256)

    def model_path(self, base_dir: str | Path | None = None) -> Path | None:
        """Where :attr:`model_file` is: the package's models folder, ``base_dir`` for a relative path
        (the folder holding the spec), or the absolute path itself."""
        return None if self.model_file is None else resolve_file(self.model_file, base_dir)

    @property
    def has_text_tower(self) -> bool:
        """Whether text can be encoded into the space of this encoder's image vectors."""
        return self.text is not None

    def file(self, role: str) -> ModelFile | None:
        """The further file with this role, or ``None``."""
        return next((f for f in self.files if f.role == role), None)

    def with_files(self, files: "Sequence[ModelFile]") -> "EncoderSpec":
        """The same identity with these further files (replacing any of the same role)."""
        roles = {f.role for f in files}
        return replace(self, files=tuple(f for f in self.files if f.role not in roles) + tuple(files))

    def with_absolute_files(self, base_dir: str | Path | None) -> "EncoderSpec":
        """The spec with each relative file name (model and further files) made absolute against
        ``base_dir``, so any process can open them; shipped files stay named as such."""
        spec = self
        if self.model_file is not None and not self.model_file.startswith(PACKAGED):
            spec = spec.with_model(self.model_path(base_dir), self.model_sha256)  # type: ignore[arg-type]
        files = tuple(f if f.file.startswith(PACKAGED) else ModelFile(f.role, str(f.path(base_dir)), f.sha256)
                      for f in self.files)
        return replace(spec, files=files)

    # ----- as JSON ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dim": int(self.dim),
            "weights_id": self.weights_id,
            "preprocessing": self.preprocessing.to_dict() if self.preprocessing is not None else None,
            "precision": self.precision,
            "weights_source": self.weights_source,
            "model_file": self.model_file,
            "model_sha256": self.model_sha256,
            "identity": json.loads(json.dumps(dict(self.identity), default=str)),
            # Only where there is a text tower, so the records of image-only encoders keep their form.
            **({"text": json.loads(json.dumps(dict(self.text)))} if self.text is not None else {}),
            **({"files": [f.to_dict() for f in self.files]} if self.files else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EncoderSpec":
        """Inverse of :meth:`to_dict`.

        Raises:
            DataError: a field is missing or malformed (the message names it).
        """
        try:
            pre = data.get("preprocessing")
            return cls(
                name=str(data["name"]),
                dim=int(data["dim"]),
                weights_id=str(data["weights_id"]),
                preprocessing=Preprocessing.from_dict(pre) if pre is not None else None,
                precision=str(data.get("precision", "fp32")),
                weights_source=data.get("weights_source"),
                model_file=data.get("model_file"),
                model_sha256=data.get("model_sha256"),
                identity=dict(data.get("identity") or {}),
                text=dict(data["text"]) if data.get("text") is not None else None,
                files=tuple(ModelFile.from_dict(f) for f in data.get("files") or ()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"encoder spec is malformed ({type(exc).__name__}: {exc})") from exc

    def describe(self) -> str:
        """One line for logs and errors."""
        extra = f", {self.precision}" if self.precision != "fp32" else ""
        return f"{self.name} ({self.dim}-d, weights {self.weights_id}{extra})"
