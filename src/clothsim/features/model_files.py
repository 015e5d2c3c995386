"""The model file an index folder's vectors were made with, kept inside the folder.

An index records its encoder's :class:`~clothsim.encoders.spec.EncoderSpec` in its manifest. When that
spec runs from a model file (an ONNX export, a tuned model, an int8 quantization), the file is copied
into the folder's ``models/`` under a name that carries its hash, and the recorded spec names it
relative to the folder: the index then searches with exactly that model, on a machine without torch, the
export cache or the training folder. Files shipped with clothsim (``package:...``) are not copied.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from clothsim.encoders.spec import PACKAGED, EncoderSpec
from clothsim.fileio import atomic_path, file_sha256

MODELS_DIR = "models"


def kept_name(spec: EncoderSpec) -> str:
    """The file name a model gets in ``models/``: the encoder's name and the start of the file's hash."""
    slug = re.sub(r"[^A-Za-z0-9._+-]+", "_", spec.name).strip("_.")[-60:] or "encoder"
    return f"{slug}-{spec.precision}-{(spec.model_sha256 or '')[:16]}.onnx"


def keep_model_file(root: str | Path, spec: EncoderSpec) -> EncoderSpec:
    """Copy ``spec``'s model file into ``root/models/`` (atomically; skipped when the same file is there)
    and return the spec that names it relative to ``root``; a spec without a model file, or with a
    shipped one, is returned as it is."""
    if spec.model_file is None or spec.model_file.startswith(PACKAGED):
        return spec
    source = spec.model_path(root)
    relative = Path(MODELS_DIR) / kept_name(spec)
    target = Path(root) / relative
    if source is not None and source.resolve() != target.resolve():
        if not (target.is_file() and file_sha256(target) == spec.model_sha256):
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
    return spec.with_model(relative.as_posix(), spec.model_sha256)  # type: ignore[arg-type]
