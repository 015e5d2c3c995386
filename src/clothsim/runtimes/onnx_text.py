"""The text tower of a CLIP-family encoder, run by ONNX Runtime without torch.

An encoder whose spec has a text tower (``spec.text``) names two further files: the text tower exported to
ONNX (token ids in, vectors out) and its tokenizer (a ``tokenizers`` JSON file). :class:`OnnxTextEncoder`
checks both against their SHA-256, tokenizes with :class:`~clothsim.encoders.text_tokenizer.TextTokenizer`
and returns unit vectors in the space of the encoder's image vectors, so a text query searches an image
index directly. An encoder without one is refused with :func:`text_refusal`'s message.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from clothsim.encoders.base import l2_normalize
from clothsim.encoders.spec import TEXT_MODEL, TOKENIZER, EncoderSpec
from clothsim.encoders.text_tokenizer import TextTokenizer
from clothsim.errors import UsageError
from clothsim.runtimes import default_threads
from clothsim.runtimes.onnx_runtime import check_model_file, make_session

logger = logging.getLogger(__name__)

#: What a user is pointed to when an encoder has no text tower.
TEXT_ENCODERS_HINT = ("encoders with a text tower: open_clip:NAME@PRETRAINED (e.g. "
                      "open_clip:ViT-B-32@laion2b_s34b_b79k) and open_clip:hf-hub:ORG/REPO (e.g. "
                      "open_clip:hf-hub:Marqo/marqo-fashionSigLIP)")
#: Texts encoded together; queries are short, and a label list is rarely longer.
TEXT_BATCH = 64

__all__ = ["OnnxTextEncoder", "TEXT_ENCODERS_HINT", "text_refusal"]


def text_refusal(spec: EncoderSpec, where: str = "this index") -> str:
    """Why ``spec`` cannot encode text, and which encoders can (one message for the CLI, API and server)."""
    backbone = spec.identity.get("backbone")
    if backbone and str(backbone).startswith("open_clip:"):
        return (f"{where} was built with {spec.name}, fine-tuned from {backbone}: its image vectors were "
                f"trained away from the text tower's space, so text search is not offered for it; build the "
                f"index with {backbone} itself to search by text")
    return (f"{where} was built with {spec.name}, which has no text tower, so it cannot be searched by text; "
            f"{TEXT_ENCODERS_HINT}")


def used_length(tokens: np.ndarray, pad_id: int = 0) -> int:
    """The length that keeps every row's tokens up to its last one that is not padding."""
    used = np.flatnonzero((tokens != pad_id).any(axis=0))
    return int(used[-1]) + 1 if used.size else 1


class OnnxTextEncoder:
    """Texts -> L2-normalised float32 vectors in the space of the image vectors of ``spec``.

    Args:
        spec: An encoder spec with a text tower whose files are absolute paths (or relative to
            ``base_dir``).
        threads: Intra-op threads of the session (default: every core this process may use).
        base_dir: The folder relative file names are in (an index folder).

    Raises:
        UsageError: ``spec`` has no text tower (the message says which encoders have one).
        DataError: a file is missing or not the one the spec records.
    """

    def __init__(self, spec: EncoderSpec, threads: int | None = None, base_dir: str | Path | None = None) -> None:
        model, tokenizer = spec.file(TEXT_MODEL), spec.file(TOKENIZER)
        if spec.text is None or model is None or tokenizer is None:
            raise UsageError(text_refusal(spec, f"the encoder {spec.name}" if base_dir is None else str(base_dir)))
        self.name = spec.name
        self.dim = spec.dim
        self.model_path = model.path(base_dir)
        tokenizer_path = tokenizer.path(base_dir)
        check_model_file(self.model_path, model.sha256, f"{spec.name}'s text tower")
        check_model_file(tokenizer_path, tokenizer.sha256, f"{spec.name}'s tokenizer")
        self.tokenizer = TextTokenizer.from_settings(tokenizer_path, spec.text)
        self._settings = dict(spec.text)
        self.session = make_session(self.model_path, threads or default_threads(), model.sha256)
        self._input = self.session.get_inputs()[0].name

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)`` unit rows, :data:`TEXT_BATCH` texts at a time.

        Raises:
            UsageError: a text is empty once cleaned of whitespace.
        """
        if isinstance(texts, str):
            texts = [texts]
        for text in texts:
            if not str(text).strip():
                raise UsageError("a text query must not be empty")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        trim = bool(self._settings.get("trim_after_end"))
        for start in range(0, len(texts), TEXT_BATCH):
            tokens = self.tokenizer(list(texts[start:start + TEXT_BATCH]))
            if trim:  # a causal tower: the padding after the last end token changes nothing, and costs
                tokens = np.ascontiguousarray(tokens[:, :used_length(tokens, int(self._settings.get("pad_id", 0)))])
            out.append(self.session.run(None, {self._input: tokens})[0])
        vectors = l2_normalize(np.concatenate(out).astype(np.float32, copy=False))
        if vectors.shape[1] != self.dim:
            raise UsageError(f"{self.name}: the text tower gives {vectors.shape[1]}-d vectors, the images "
                             f"{self.dim}-d; they cannot be compared")
        return vectors

    def __repr__(self) -> str:
        return f"OnnxTextEncoder(name={self.name!r}, dim={self.dim}, model={str(self.model_path)!r})"
