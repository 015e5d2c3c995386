"""Tiny hub models for tests: an OpenCLIP configuration registered under a name of its own (random or
locally saved weights only; nothing is downloaded)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

TINY_CLIP = "clothsim-tiny-clip"
# Two layers per tower, 32-pixel images, a 16-token context, the CLIP BPE vocabulary.
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def register_tiny_clip() -> str:
    """Register the tiny configuration with open_clip (once per process); returns its name."""
    import open_clip

    if open_clip.get_model_config(TINY_CLIP) is None:
        folder = Path(tempfile.mkdtemp(prefix="clothsim-tiny-clip-"))
        path = folder / f"{TINY_CLIP}.json"
        path.write_text(json.dumps(TINY_CLIP_CONFIG))
        open_clip.add_model_config(path)
    return TINY_CLIP
