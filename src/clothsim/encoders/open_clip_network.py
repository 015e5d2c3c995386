"""``open_clip:NAME[@PRETRAINED]`` and ``open_clip:hf-hub:ORG/REPO``: OpenCLIP models as encoders (the
``hub`` extra), with their text tower.

The image vectors are the model's ``encode_image``; the text tower (``encode_text``) maps text into the
same space, so an index built with such an encoder can be searched by text and can label its items from a
list of words. Preprocessing comes from the weights' config (size, mean and std, interpolation, resize
mode), as open_clip applies it.

Weights: ``NAME@TAG`` names open_clip's pretrained weights (``open_clip.list_pretrained()``), fetched
from the hub or their address once; ``hf-hub:ORG/REPO`` takes the config and weights of a repository
published for open_clip (Marqo-FashionSigLIP is ``hf-hub:Marqo/marqo-fashionSigLIP``); ``--weights PATH``
takes a local checkpoint of the model (``NAME`` or ``NAME@TAG`` for its preprocessing), ``--weights
random`` a seeded random model. Names of configurations added with ``open_clip.add_model_config`` work
as built-in ones do.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from clothsim.encoders.base import Encoder, Preprocessing, l2_normalize
from clothsim.encoders.hub_files import hub_file, manual_path
from clothsim.encoders.weights import RANDOM, build_seeded, download_to_cache, file_digest
from clothsim.errors import DataError, UnknownEncoderError, UsageError, WeightsUnavailableError
from clothsim.optional import require

logger = logging.getLogger(__name__)

PREFIX = "open_clip:"
HUB_SCHEMA = "hf-hub:"
HUB_CONFIG = "open_clip_config.json"
#: Where an open_clip repository on the hub keeps its weights, the safer format first.
HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
FIND_MODELS = ("list them with: python -c \"import open_clip; print(open_clip.list_pretrained())\", or use "
               "hf-hub:ORG/REPO for a repository published for open_clip")


def _open_clip():
    return require("open_clip", extra="hub", feature="open_clip: encoders")


def parse_name(spec: str) -> tuple[str, str | None]:
    """``"ViT-B-32@laion2b_s34b_b79k"`` -> ``("ViT-B-32", "laion2b_s34b_b79k")``; a hub name has no tag."""
    if spec.startswith(HUB_SCHEMA):
        return spec, None
    model, sep, tag = spec.partition("@")
    if sep and not tag:
        raise UsageError(f"open_clip:{spec}: name the pretrained weights after '@', e.g. open_clip:{model}@TAG")
    return model, tag or None


def _hub_weights(repo: str, what: str, hint: str) -> Path:
    """The first of :data:`HUB_WEIGHTS` that can be had from ``repo`` (the error names them all)."""
    errors = []
    for filename in HUB_WEIGHTS:
        try:
            return hub_file(repo, filename, what=what, hint=hint)
        except WeightsUnavailableError as exc:
            errors.append(exc)
    raise WeightsUnavailableError(f"{errors[0]} (or {HUB_WEIGHTS[1]} beside it)") from errors[0]


def _hub_config_dir(repo: str, what: str) -> Path:
    """The folder holding ``open_clip_config.json`` of hub repository ``repo`` (downloaded once)."""
    return hub_file(repo, HUB_CONFIG, what=what).parent


def _pretrained_weights(model: str, tag: str, what: str, hint: str) -> Path:
    """The local copy of open_clip's pretrained weights ``tag`` of ``model``."""
    open_clip = _open_clip()
    cfg = open_clip.get_pretrained_cfg(model, tag)
    hub = cfg.get("hf_hub")
    if hub:
        # "org/repo/file.bin" names the file; "org/repo/" means the repository's usual weights file.
        repo, filename = (hub.rstrip("/"), "") if hub.endswith("/") else hub.rsplit("/", 1)
        if filename:
            return hub_file(repo, filename, what=what, hint=hint)
        return _hub_weights(repo, what, hint)
    if cfg.get("url"):
        return download_to_cache(cfg["url"], hint=hint)
    raise UsageError(f"open_clip has no download for {model}@{tag}; pass --weights PATH")


def _preprocess_override(model: str, tag: str | None) -> dict[str, Any]:
    """The pretrained tag's preprocessing settings (open_clip applies them only to weights loaded by tag)."""
    if tag is None:
        return {}
    cfg = _open_clip().get_pretrained_cfg(model, tag)
    return {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}


def build_clip_model(spec: str, weights: str | Path | None) -> tuple[nn.Module, Any, str, str]:
    """The open_clip model and tokenizer for ``spec`` (``NAME[@TAG]`` or ``hf-hub:ORG/REPO``), with the
    weights id and where the weights came from.

    Raises:
        UnknownEncoderError: an unknown model name or tag (the message says how to list them).
        WeightsUnavailableError: weights or config neither here nor downloadable; says what to put where.
        DataError: a checkpoint that does not fit the model.
    """
    open_clip = _open_clip()
    model_name, tag = parse_name(spec)
    what = f"open_clip:{spec}"
    hint = f"; or pass --weights PATH naming a local checkpoint of {model_name}, or --weights random"
    if model_name.startswith(HUB_SCHEMA):
        repo = model_name[len(HUB_SCHEMA):]
        source = f"local-dir:{_hub_config_dir(repo, what + ' config')}"
        override: dict[str, Any] = {}
    else:
        if open_clip.get_model_config(model_name) is None:
            raise UnknownEncoderError(f"unknown open_clip model {model_name!r}; {FIND_MODELS}")
        if tag is not None and not open_clip.get_pretrained_cfg(model_name, tag):
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            raise UnknownEncoderError(f"open_clip has no pretrained weights {tag!r} for {model_name}; its tags: "
                                      f"{', '.join(tags) or 'none'}; {FIND_MODELS}")
        if tag is None and weights is None:
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            raise UsageError(f"open_clip:{model_name} needs weights: name them (open_clip:{model_name}@TAG; tags: "
                             f"{', '.join(tags) or 'none'}), or pass --weights PATH or --weights random")
        source = model_name
        override = _preprocess_override(model_name, tag)

    def create() -> nn.Module:
        # No tower weights from elsewhere: the weights come from one checkpoint (or none, for random).
        return open_clip.create_model(source, pretrained=None, load_weights=False, pretrained_image=False,
                                      pretrained_text=False, force_preprocess_cfg=override or None)

    if isinstance(weights, str) and weights == RANDOM:
        model, weights_id, origin = build_seeded(create), RANDOM, RANDOM
    else:
        if weights is not None:
            path = Path(weights).expanduser()
        elif model_name.startswith(HUB_SCHEMA):
            path = _hub_weights(model_name[len(HUB_SCHEMA):], what + " weights", hint)
        else:
            path = _pretrained_weights(model_name, tag, what + " weights", hint)  # type: ignore[arg-type]
        if not path.is_file():
            raise WeightsUnavailableError(f"weights file {path} does not exist")
        model = create()
        try:
            open_clip.load_checkpoint(model, str(path), strict=True)
        except (RuntimeError, KeyError, ValueError, OSError, EOFError) as exc:
            raise DataError(f"{path} is not a checkpoint of open_clip {model_name} "
                            f"({type(exc).__name__}: {str(exc)[:300]})") from exc
        weights_id, origin = file_digest(path), str(path)
    return model.eval(), _tokenizer(source, model_name), weights_id, origin


def _tokenizer(source: str, model_name: str) -> Any:
    """open_clip's tokenizer for the model; a hub tokenizer it names comes from the hub cache, or from
    ``$CLOTHSIM_CACHE/hub/<repo>/`` where its files were placed by hand."""
    open_clip = _open_clip()
    config_path = Path(source[len("local-dir:"):]) / HUB_CONFIG if source.startswith("local-dir:") else None
    text_cfg = (json.loads(config_path.read_text(encoding="utf-8"))["model_cfg"] if config_path
                else open_clip.get_model_config(source) or {}).get("text_cfg", {})
    hf_name = text_cfg.get("hf_tokenizer_name")
    if not hf_name:
        return open_clip.get_tokenizer(source)
    manual = manual_path(hf_name, "tokenizer_config.json").parent
    name = str(manual) if manual.is_dir() else hf_name
    try:
        return open_clip.HFTokenizer(name, context_length=text_cfg.get("context_length", 77),
                                     **text_cfg.get("tokenizer_kwargs", {}))
    except (OSError, ValueError) as exc:
        raise WeightsUnavailableError(
            f"open_clip:{model_name}: its tokenizer {hf_name} is not cached here and could not be downloaded "
            f"({str(exc).splitlines()[0][:160]}). Download tokenizer.json, tokenizer_config.json and "
            f"special_tokens_map.json from https://huggingface.co/{hf_name} on a machine with internet access "
            f"and put them in {manual}") from exc


def clip_preprocessing(model: nn.Module, name: str) -> Preprocessing:
    """clothsim's :class:`Preprocessing` for the open_clip model's inference transform.

    Raises:
        UsageError: a setting clothsim cannot reproduce (a non-square size, the ``longest`` resize mode,
            another interpolation).
    """
    cfg = dict(model.visual.preprocess_cfg)
    size = cfg["size"]
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise UsageError(f"{name} takes {size[0]}x{size[1]} inputs; clothsim encoders take square inputs")
        size = size[0]
    mode = cfg.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        raise UsageError(f"{name} resizes with mode {mode!r}; clothsim supports 'shortest' and 'squash'")
    if cfg.get("interpolation", "bicubic") not in ("bilinear", "bicubic"):
        raise UsageError(f"{name} uses {cfg['interpolation']!r} interpolation; clothsim supports bilinear and bicubic")
    return Preprocessing(input_size=int(size), resize_size=int(size), mean=tuple(cfg["mean"]),  # type: ignore[arg-type]
                         std=tuple(cfg["std"]), interpolation=cfg.get("interpolation", "bicubic"),  # type: ignore[arg-type]
                         resize_mode=mode)


class ImageTower(nn.Module):
    """Images -> the model's image vectors (before normalisation)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)


class TextTower(nn.Module):
    """Token ids -> the model's text vectors (before normalisation).

    For a CLIP text tower with a causal mask that pools at the end-of-text token, any length up to the
    context works: the end token's vector depends only on the tokens before it, so the padding after it
    can be left out (:attr:`variable_length`), and a short query runs on its own few tokens instead of
    the whole context.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.variable_length = _plain_causal_clip(model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.variable_length:
            return self.model.encode_text(tokens)
        from open_clip.transformer import text_global_pool

        model = self.model
        length = tokens.shape[1]
        x = model.token_embedding(tokens) + model.positional_embedding[:length]
        mask = model.attn_mask[:length, :length].to(x.dtype)
        for block in model.transformer.resblocks:
            x = x + block.ls_1(_attention(block.attn, block.ln_1(x), mask))
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        x = text_global_pool(model.ln_final(x), tokens, model.text_pool_type)
        if model.text_projection is None:
            return x
        return model.text_projection(x) if isinstance(model.text_projection, nn.Linear) else x @ model.text_projection


def _plain_causal_clip(model: nn.Module) -> bool:
    """Whether ``model``'s text tower is the plain CLIP one whose length may vary: a causal mask, pooling
    at the end token, batch-first blocks of multi-head self-attention and an MLP, and nothing else."""
    from open_clip.model import CLIP
    from open_clip.transformer import ResidualAttentionBlock

    if not isinstance(model, CLIP) or getattr(model, "attn_mask", None) is None:
        return False
    if getattr(model, "text_pool_type", None) != "argmax" or not getattr(model.transformer, "batch_first", False):
        return False
    return all(type(block) is ResidualAttentionBlock and isinstance(block.attn, nn.MultiheadAttention)
               and not hasattr(block, "ln_1_kv") and block.attn.batch_first and block.attn.in_proj_weight is not None
               for block in model.transformer.resblocks)


def _attention(attn: nn.MultiheadAttention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Multi-head self-attention as ``nn.MultiheadAttention`` computes it, written with shapes taken from
    the input, so an export keeps the sequence length free (PyTorch's own kernel fixes it in a trace)."""
    heads = attn.num_heads
    q, k, v = nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    batch, length = x.shape[0], x.shape[1]
    q, k, v = (t.reshape(batch, length, heads, -1).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5) + mask
    out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, length, -1)
    return attn.out_proj(out)


class OpenClipEncoder(Encoder):
    """An open_clip model: its image vectors, and its text tower for text in the same space.

    Its :attr:`spec` names the text tower's exported files (an ONNX file and a tokenizer JSON), exported
    once and cached, so every index built with it keeps them and searches by text without torch.

    Args:
        spec_name: What follows ``open_clip:`` in the encoder's name.
        model: The open_clip model.
        tokenizer: open_clip's tokenizer for it.
        weights_id: The checkpoint's hash prefix, or ``"random"``.
        device: Torch device.
    """

    def __init__(self, spec_name: str, model: nn.Module, tokenizer: Any, weights_id: str,
                 device: str | torch.device = "cpu") -> None:
        self.name = f"{PREFIX}{spec_name}"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.weights_id = weights_id
        self.preprocessing = clip_preprocessing(model, self.name)
        self.context_length = int(getattr(tokenizer, "context_length", None) or model.context_length)
        size = self.preprocessing.input_size
        with torch.no_grad():
            self.dim = int(self.model.encode_image(torch.zeros(1, 3, size, size, device=self.device)).shape[-1])
        self._text_spec: tuple[dict[str, Any] | None, tuple] | None = None

    def embed(self, batch: Any) -> np.ndarray:
        """``(N, dim)`` unit rows: the model's image vectors."""
        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(batch)
        if not isinstance(batch, torch.Tensor) or batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"{self.name}: batch must have shape (N, 3, H, W), got "
                             f"{tuple(getattr(batch, 'shape', ())) or type(batch).__name__}")
        if batch.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            vectors = self.model.encode_image(batch.to(self.device, torch.float32))
        return l2_normalize(vectors.float().cpu().numpy())

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """``(N, dim)`` unit rows of ``texts``, in torch with open_clip's own tokenizer (the reference the
        exported text tower is checked against)."""
        tokens = self.tokenize(texts)
        with torch.inference_mode():
            vectors = self.model.encode_text(tokens.to(self.device))
        return l2_normalize(vectors.float().cpu().numpy())

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """open_clip's token ids of ``texts``."""
        return self.tokenizer(list(texts))

    def export_module(self) -> nn.Module:
        return ImageTower(self.model)

    def text_module(self) -> nn.Module:
        return TextTower(self.model)

    @property
    def spec(self):  # type: ignore[override]
        """The identity, with the text tower's settings and its exported files (exported on first use)."""
        from dataclasses import replace

        from clothsim.runtimes.text_export import export_text_tower

        if self._text_spec is None:
            settings, files = export_text_tower(self)
            self._text_spec = (settings, tuple(files))
        settings, files = self._text_spec
        return replace(super().spec, text=settings, files=files)


def build_open_clip_encoder(spec: str, weights: str | Path | None, device: str) -> OpenClipEncoder:
    """The ``open_clip:`` family's encoder for ``spec``."""
    model, tokenizer, weights_id, origin = build_clip_model(spec, weights)
    logger.debug("built open_clip:%s with weights %s from %s", spec, weights_id, origin)
    return OpenClipEncoder(spec, model, tokenizer, weights_id, device)
