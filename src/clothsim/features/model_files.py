"""The model files an index folder's vectors were made with, kept inside the folder.

An index records its encoder's :class:`~clothsim.encoders.spec.EncoderSpec` in its manifest. When that
spec runs from a model file (an ONNX export, a tuned model, an int8 quantization), the file is copied
into the folder's ``models/`` under a name that carries its hash, and the recorded spec names it
relative to the folder: the index then searches with exactly that model, on a machine without torch, the
export cache or the training folder. The spec's further files (a text tower and its tokenizer) are kept
the same way, one by one. Files shipped with clothsim (``package:...``) are not copied.
:func:`recorded_spec` reads the spec back, and :func:`model_file_problem` is what ``clothsim verify``
checks of it.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from clothsim.encoders.spec import PACKAGED, EncoderSpec, ModelFile, fingerprint_mismatch
from clothsim.errors import UsageError
from clothsim.fileio import atomic_path, file_sha256

if TYPE_CHECKING:
    from clothsim.features.store import FeatureStore

MODELS_DIR = "models"


def _slug(spec: EncoderSpec) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", spec.name).strip("_.")[-60:] or "encoder"


def kept_name(spec: EncoderSpec) -> str:
    """The file name a model gets in ``models/``: the encoder's name and the start of the file's hash."""
    return f"{_slug(spec)}-{spec.precision}-{(spec.model_sha256 or '')[:16]}.onnx"


def kept_file_name(spec: EncoderSpec, extra: ModelFile) -> str:
    """The name a further file gets in ``models/``: the encoder's name, the file's role and hash, and the
    suffix it had."""
    suffix = "".join(Path(extra.file).suffixes[-1:]) or ".bin"
    return f"{_slug(spec)}-{extra.role}-{extra.sha256[:16]}{suffix}"


def _keep(source: Path | None, root: Path, relative: Path, sha256: str) -> None:
    """Copy ``source`` to ``root/relative`` atomically, unless the same file is there already."""
    target = root / relative
    if source is not None and source.resolve() != target.resolve():
        if not (target.is_file() and file_sha256(target) == sha256):
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)


def keep_model_file(root: str | Path, spec: EncoderSpec) -> EncoderSpec:
    """Copy ``spec``'s model file and further files into ``root/models/`` (atomically; skipped when the
    same file is there) and return the spec that names them relative to ``root``; a spec without files,
    or with shipped ones, is returned as it is."""
    root = Path(root)
    if spec.model_file is not None and not spec.model_file.startswith(PACKAGED):
        relative = Path(MODELS_DIR) / kept_name(spec)
        _keep(spec.model_path(root), root, relative, spec.model_sha256)  # type: ignore[arg-type]
        spec = spec.with_model(relative.as_posix(), spec.model_sha256)  # type: ignore[arg-type]
    kept = []
    for extra in spec.files:
        if extra.file.startswith(PACKAGED):
            kept.append(extra)
            continue
        relative = Path(MODELS_DIR) / kept_file_name(spec, extra)
        _keep(extra.path(root), root, relative, extra.sha256)
        kept.append(ModelFile(extra.role, relative.as_posix(), extra.sha256))
    return spec.with_files(kept) if kept else spec


def recorded_spec(store: FeatureStore) -> EncoderSpec:
    """The spec of the encoder that made ``store``'s vectors, as recorded in its manifest.

    An index written before specs were recorded has only its fingerprint: its spec is rebuilt from that
    (with the int8 model file such an index kept under ``models/``). A spec without a model file whose
    identity is that of a model file ready to run (the shipped default encoder's) gets that file, so it
    searches without torch.
    """
    manifest = store.manifest
    if manifest.get("encoder_spec"):
        spec = EncoderSpec.from_dict(manifest["encoder_spec"])
    else:
        fingerprint = store.fingerprint
        model_file = None
        if fingerprint.get("precision") == "int8":  # kept at models/<name>-int8.onnx by earlier versions
            slug = "".join(c if c.isalnum() or c in "._+-" else "_" for c in str(fingerprint["encoder"]))[-60:]
            model_file = f"models/{slug}-int8.onnx"
        spec = EncoderSpec.from_fingerprint(fingerprint, weights_source=manifest.get("weights_source"),
                                            model_file=model_file)
    if spec.model_file is None:
        from clothsim.encoders.factory import ready_spec

        try:
            ready = ready_spec(spec.name, spec.weights_source)
        except UsageError:
            ready = None
        if ready is not None and not fingerprint_mismatch(ready.fingerprint(), spec.fingerprint()):
            spec = replace(spec, model_file=ready.model_file, model_sha256=ready.model_sha256)
    return spec


def model_file_problem(store: "FeatureStore", full: bool = True) -> str | None:
    """Why a model file ``store``'s index records cannot be used (missing, or, with ``full``, not the
    recorded file by its SHA-256), or ``None`` when every one is intact or the index has none. The image
    model is checked first, then the further files (text tower, tokenizer)."""
    spec = recorded_spec(store)
    checks = [(spec.model_path(store.root), spec.model_sha256, "the model file")] if spec.model_file else []
    checks += [(extra.path(store.root), extra.sha256, f"the {extra.role.replace('_', ' ')} file")
               for extra in spec.files]
    for path, sha256, what in checks:
        if not path.is_file():
            return f"{path}: {what} of {spec.name} is missing"
        if full and file_sha256(path) != sha256:
            return f"{path}: {what} of {spec.name} is not the one recorded (SHA-256 differs)"
    return None
