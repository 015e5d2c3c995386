"""Text to token ids without torch: the text normalisation CLIP-family models use, then a ``tokenizers``
JSON file that holds the vocabulary, the splitting rules, the special tokens, truncation and padding.

open_clip cleans text before tokenizing it (``ftfy`` repairs broken Unicode and typographic quotes, HTML
entities are unescaped twice, whitespace is collapsed, and then, per model, the text is lower-cased or
stripped of punctuation). That cleaning is done here in Python, the same steps in the same order, and
the rest by the ``tokenizers`` library, so the ids are open_clip's (the export checks them against
open_clip's own tokenizer, and the tests do on many strings). One difference is known and kept: CLIP's
start/end markers typed literally inside a query are read as plain characters (open_clip sometimes reads
them as markers). Neither torch nor open_clip is imported.
"""

from __future__ import annotations

import html
import string
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from clothsim.errors import UsageError
from clothsim.optional import require

#: How text is normalised before tokenizing: open_clip's ``clean`` settings.
CLEAN_MODES = ("lower", "whitespace", "canonicalize")
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)

__all__ = ["CLEAN_MODES", "TextTokenizer", "clean_text"]


def _basic(text: str) -> str:
    ftfy = require("ftfy", extra="text", feature="text search (its text cleaning)")
    text = ftfy.fix_text(text)
    return html.unescape(html.unescape(text)).strip()


def _whitespace(text: str) -> str:
    return " ".join(text.split()).strip()


def clean_text(text: str, mode: str) -> str:
    """``text`` normalised as open_clip does before tokenizing, for ``mode`` in :data:`CLEAN_MODES`.

    Raises:
        ValueError: an unknown mode.
    """
    if mode == "lower":
        return _whitespace(_basic(text)).lower()
    if mode == "whitespace":
        return _whitespace(_basic(text))
    if mode == "canonicalize":
        # big_vision's canonicalisation, as open_clip applies it: underscores become spaces, punctuation
        # goes, then lower case and single spaces.
        text = _basic(text).replace("_", " ").translate(_NO_PUNCTUATION).lower()
        return _whitespace(text)
    raise ValueError(f"clean must be one of {CLEAN_MODES}, got {mode!r}")


class TextTokenizer:
    """Texts -> ``(N, context_length)`` int64 token ids, as the model's own tokenizer gives them.

    Args:
        path: The ``tokenizers`` JSON file (with its truncation and padding to ``context_length``).
        clean: How text is normalised first (:data:`CLEAN_MODES`).
        context_length: Tokens per text; every row has exactly this many.
        zeroed_ids: Token ids replaced by 0 after tokenizing (a separator some models do not use).

    Raises:
        UsageError: unknown ``clean`` mode.
        MissingDependencyError: ``tokenizers`` or ``ftfy`` is not installed (the ``text`` extra).
    """

    def __init__(self, path: str | Path, clean: str, context_length: int,
                 zeroed_ids: Sequence[int] = ()) -> None:
        if clean not in CLEAN_MODES:
            raise UsageError(f"unknown text cleaning {clean!r}; expected one of {CLEAN_MODES}")
        tokenizers = require("tokenizers", extra="text", feature="text search (its tokenizer)")
        self.path = Path(path)
        self.clean = clean
        self.context_length = int(context_length)
        self.zeroed_ids = tuple(int(i) for i in zeroed_ids)
        self._tokenizer = tokenizers.Tokenizer.from_file(str(self.path))
        # The file says so too; set here as well, so every row has the model's length whatever it says.
        padding = self._tokenizer.padding or {}
        self._tokenizer.enable_truncation(max_length=self.context_length)
        self._tokenizer.enable_padding(length=self.context_length, pad_id=int(padding.get("pad_id", 0)),
                                       pad_token=str(padding.get("pad_token", "[PAD]")))

    @classmethod
    def from_settings(cls, path: str | Path, settings: Mapping[str, Any]) -> "TextTokenizer":
        """A tokenizer from an encoder spec's ``text`` settings (``clean``, ``context_length``,
        ``zeroed_ids``)."""
        return cls(path, str(settings["clean"]), int(settings["context_length"]),
                   tuple(settings.get("zeroed_ids") or ()))

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids of ``texts``, one row each."""
        if isinstance(texts, str):
            texts = [texts]
        cleaned = [clean_text(str(text), self.clean) for text in texts]
        encodings = self._tokenizer.encode_batch(cleaned)
        ids = np.asarray([encoding.ids for encoding in encodings], dtype=np.int64).reshape(len(cleaned), -1)
        for token in self.zeroed_ids:
            ids[ids == token] = 0
        return ids
