"""Exporting a CLIP-family text tower and its tokenizer, so text is encoded without torch (the ``hub``
extra).

Two files come out, cached beside the image exports (``$CLOTHSIM_CACHE/onnx``) and keyed the same way:

* the text tower as ONNX (int64 token ids ``(N, context_length)`` in, vectors out), checked against torch
  on token ids of probe texts (1 - cos at most :data:`~clothsim.runtimes.onnx_export.MAX_DISAGREEMENT`);
* the tokenizer as a ``tokenizers`` JSON file: open_clip's BPE tokenizer rebuilt from its vocabulary and
  merges, or a hub tokenizer's own fast tokenizer, with truncation and padding to the context length.
  The ids it gives (after :func:`~clothsim.encoders.text_tokenizer.clean_text`) are checked against
  open_clip's tokenizer on :data:`PROBE_TEXTS`.

When either check fails, the encoder is left without a text tower (logged, and text search says so)
rather than given one that encodes text differently from the model.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from clothsim.encoders.spec import TEXT_MODEL, TOKENIZER, ModelFile
from clothsim.encoders.text_tokenizer import TextTokenizer
from clothsim.fileio import atomic_path, file_sha256, write_json
from clothsim.optional import require
from clothsim.runtimes.onnx_export import MAX_DISAGREEMENT, OPSET, _damage, cache_path, plain_attention
from clothsim.runtimes.onnx_runtime import make_session
from clothsim.runtimes.onnx_text import used_length

logger = logging.getLogger(__name__)

#: Texts the exported tokenizer and text tower are checked on: plain, cased, punctuated, accented, HTML
#: entities, typographic quotes, digits, non-Latin scripts, emoji, a marker inside punctuation, and one
#: longer than any context.
PROBE_TEXTS = (
    "a photo of a red floral summer dress", "Blue DENIM jacket, size M", "don't   stop\tbelievin'",
    "t-shirt & shorts", "“curly quotes” and ‘single’ ones", "café crème brûlée", "50% off!!! $19.99",
    "&amp;lt;b&amp;gt; html", "日本語のテキスト", "платье в горошек", "👗 + 👠 = ❤️", "x-<end_of_text>-y",
    "snake_case_words and CamelCase", " ".join(["long"] * 120), "", "a",
)
#: How open_clip's cleaning functions are named in settings.
_CLEAN_OF = {"_clean_lower": "lower", "_clean_whitespace": "whitespace", "_clean_canonicalize": "canonicalize"}


class TextTowerUnavailable(RuntimeError):
    """The model's text tower or tokenizer cannot be reproduced without torch (the reason says why)."""


def export_text_tower(network: Any) -> tuple[dict[str, Any] | None, list[ModelFile]]:
    """The text settings and exported files of ``network`` (an open_clip encoder), exported now if they
    are not cached yet; ``(None, [])`` when the tower cannot be reproduced (logged with the reason).
    """
    try:
        settings, tokenizer_path = _exported_tokenizer(network)
        model_path = _exported_text_model(network, tokenizer_path, settings)
    except TextTowerUnavailable as exc:
        logger.warning("%s: text search is not offered for this encoder: %s", network.name, exc)
        return None, []
    files = [ModelFile(TEXT_MODEL, str(model_path), file_sha256(model_path)),
             ModelFile(TOKENIZER, str(tokenizer_path), file_sha256(tokenizer_path))]
    return settings, files


# ----- the tokenizer ---------------------------------------------------------------------------------------
def _tokenizer_json(tokenizer: Any, context_length: int) -> tuple[str, dict[str, Any]]:
    """open_clip's ``tokenizer`` as a ``tokenizers`` JSON string and its settings.

    Raises:
        TextTowerUnavailable: a tokenizer kind that has no such form.
    """
    tokenizers = require("tokenizers", extra="text", feature="exporting a tokenizer")
    kind = type(tokenizer).__name__
    if kind == "SimpleTokenizer":
        if getattr(tokenizer, "reduction_fn", None) is not None:
            raise TextTowerUnavailable("its tokenizer drops tokens at random (a reduction mask), which is for training")
        built = _bpe_from_simple(tokenizer, tokenizers)
        clean = _CLEAN_OF.get(tokenizer.clean_fn.__name__)
        zeroed: list[int] = []
    elif kind == "HFTokenizer":
        if getattr(tokenizer, "tokenizer_mode", ""):
            raise TextTowerUnavailable(f"its tokenizer mode {tokenizer.tokenizer_mode!r} is not reproduced")
        backend = getattr(tokenizer.tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TextTowerUnavailable("its hub tokenizer has no fast (tokenizers) form")
        built = tokenizers.Tokenizer.from_str(backend.to_str())
        clean = _CLEAN_OF.get(tokenizer.clean_fn.__name__)
        pad = tokenizer.tokenizer.pad_token_id
        built.enable_padding(length=context_length, pad_id=int(pad or 0),
                             pad_token=str(tokenizer.tokenizer.pad_token or "[PAD]"))
        sep = tokenizer.tokenizer.sep_token_id
        zeroed = [int(sep)] if tokenizer.strip_sep_token and sep is not None else []
    else:
        raise TextTowerUnavailable(f"its tokenizer ({kind}) is not one clothsim can run without torch")
    if clean is None:
        raise TextTowerUnavailable(f"its text cleaning {tokenizer.clean_fn.__name__} is not one clothsim knows")
    built.enable_truncation(max_length=context_length)
    if kind == "SimpleTokenizer":
        built.enable_padding(length=context_length, pad_id=0, pad_token="!")  # open_clip pads with id 0
    pad_id = 0 if kind == "SimpleTokenizer" else int(tokenizer.tokenizer.pad_token_id or 0)
    settings = {"clean": clean, "context_length": int(context_length), "zeroed_ids": zeroed, "pad_id": pad_id}
    return built.to_str(), settings


def _bpe_from_simple(tokenizer: Any, tokenizers: Any) -> Any:
    """open_clip's CLIP BPE tokenizer rebuilt with ``tokenizers``: the same vocabulary, merges (in rank
    order), splitting pattern (case-insensitive), byte-to-character table and start/end tokens."""
    from tokenizers import Regex, decoders, models, pre_tokenizers, processors

    merges = [pair for pair, _ in sorted(tokenizer.bpe_ranks.items(), key=lambda item: item[1])]
    specials = [tokenizer.decoder[i] for i in tokenizer.all_special_ids]
    model = models.BPE(vocab=dict(tokenizer.encoder), merges=merges, end_of_word_suffix="</w>", fuse_unk=False)
    built = tokenizers.Tokenizer(model)
    # open_clip's pattern less its special tokens (added below as special tokens, matched before splitting).
    pattern = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
    built.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("(?i)" + pattern), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    built.decoder = decoders.ByteLevel()
    # The start/end markers are added around the text only. Typed inside a query they are read as the
    # characters they are made of; open_clip reads them as markers where its pattern happens to start a
    # token on them (after a space or a letter, not after punctuation), a difference no real query meets.
    sot, eot = specials[0], specials[1]
    built.post_processor = processors.TemplateProcessing(
        single=f"{sot} $A {eot}", special_tokens=[(sot, tokenizer.encoder[sot]), (eot, tokenizer.encoder[eot])])
    return built


def check_tokenizer(reference: Any, ours: TextTokenizer, texts=PROBE_TEXTS) -> list[str]:
    """The texts on which ``ours`` gives other ids than open_clip's ``reference`` tokenizer."""
    expected = np.asarray(reference(list(texts)))
    found = ours(list(texts))
    if expected.shape != found.shape:
        return list(texts)
    return [text for text, a, b in zip(texts, expected, found) if not np.array_equal(a, b)]


def _exported_tokenizer(network: Any) -> tuple[dict[str, Any], Path]:
    path = cache_path(network, "tokenizer").with_suffix(".tokenizer.json")
    record = path.with_suffix(".record.json")
    text, settings = _tokenizer_json(network.tokenizer, network.context_length)
    if _damage(path, record) is None:
        return settings, path
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
        different = check_tokenizer(network.tokenize, TextTokenizer.from_settings(tmp, settings))
        if different:
            raise TextTowerUnavailable(f"its tokenizer could not be reproduced without torch (differs on "
                                       f"{len(different)} probe texts, e.g. {different[0][:40]!r})")
    write_json(record, {"size": path.stat().st_size, "sha256": file_sha256(path), "encoder": network.name,
                        "settings": settings})
    return settings, path


# ----- the text tower --------------------------------------------------------------------------------------
def _exported_text_model(network: Any, tokenizer_path: Path, settings: dict[str, Any]) -> Path:
    torch = require("torch", feature="exporting a text tower")
    onnx = require("onnx", feature="exporting a text tower")
    path = cache_path(network, "text")
    meta = path.with_suffix(".json")
    module = network.text_module().eval()
    variable = bool(getattr(module, "variable_length", False))
    if variable:
        settings["trim_after_end"] = True  # the runtime may leave out the padding after the last text's end
    if _damage(path, meta) is None:
        return path
    probe = TextTokenizer.from_settings(tokenizer_path, settings)(list(PROBE_TEXTS[:6]))
    axes = {"tokens": {0: "batch", 1: "length"} if variable else {0: "batch"}, "vectors": {0: "batch"}}
    logger.info("exporting the text tower of %s to ONNX (once; cached at %s)", network.name, path)
    with atomic_path(path) as tmp:
        with torch.no_grad(), warnings.catch_warnings(), plain_attention():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter, chosen on purpose
            warnings.filterwarnings("ignore", message="Constant folding")
            # Token ids index the embedding table; they are never negative, which the exporter warns about.
            warnings.filterwarnings("ignore", message="Exporting aten::index operator")
            torch.onnx.export(module, (torch.from_numpy(probe),), str(tmp), input_names=["tokens"],
                              output_names=["vectors"], dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        onnx.checker.check_model(str(tmp))
        gap = _disagreement(network, tmp, probe)
        if variable:  # the same vectors from the tokens up to the last end token alone
            short = probe[:, :used_length(probe, settings["pad_id"])]
            gap = max(gap, _disagreement(network, tmp, short, reference=probe))
        if gap > MAX_DISAGREEMENT:
            raise TextTowerUnavailable(f"the ONNX export of its text tower disagrees with torch "
                                       f"(1 - cos = {gap:.2e}, allowed {MAX_DISAGREEMENT:.0e})")
    write_json(meta, {"size": path.stat().st_size, "sha256": file_sha256(path), "encoder": network.name,
                      "part": "text", "max_one_minus_cos": gap, "torch": torch.__version__, "onnx": onnx.__version__})
    return path


def _disagreement(network: Any, path: Path, tokens: np.ndarray, reference: np.ndarray | None = None) -> float:
    """Largest ``1 - cos`` between torch's text vectors of ``reference`` (default ``tokens``) and the ONNX
    file's of ``tokens``."""
    import torch

    from clothsim.encoders.base import l2_normalize

    session = make_session(path, threads=None)
    found = l2_normalize(session.run(None, {session.get_inputs()[0].name: tokens})[0])
    with torch.inference_mode():
        expected = network.text_module()(torch.from_numpy(reference if reference is not None else tokens))
        expected = l2_normalize(expected.float().numpy())
    return float(1.0 - np.min(np.sum(found * expected, axis=1)))

