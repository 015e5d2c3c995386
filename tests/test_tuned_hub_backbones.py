"""clothsim train on hub backbones: a timm CNN cut at its stages (lower stages cached, the top trained),
saved as a model folder that indexes and searches on ONNX Runtime; a backbone that cannot be cut, or a
tuned encoder whose text space is gone, says so."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("timm", reason="the hub extra (timm) is not installed")

from _no_torch import SRC  # noqa: E402

from clothsim.cli.main import main  # noqa: E402
from clothsim.encoders.factory import build_network  # noqa: E402
from clothsim.errors import UsageError  # noqa: E402
from clothsim.training.tuned_model import backbone_layers  # noqa: E402

SAMPLE = SRC / "clothsim" / "assets" / "clothing_sample"


def test_a_timm_cnn_is_cut_into_its_stem_and_stages():
    encoder = build_network("timm:resnet18", weights="random")
    layers, channels = backbone_layers(encoder)
    assert len(layers) == 5 and channels == 512  # stem, layer1..layer4
    with pytest.raises(UsageError, match="cannot fine-tune backbone 'timm:vit_tiny_patch16_224'"):
        backbone_layers(build_network("timm:vit_tiny_patch16_224", weights="random"))


def test_train_on_a_timm_backbone_then_index_and_search(tmp_path, capsys):
    data = tmp_path / "data"
    for split in ("train", "test"):
        for category in ("dress", "shoes", "hat"):
            (data / split / category).mkdir(parents=True)
            for photo in sorted((SAMPLE / split / category).glob("*.jpg"))[:12 if split == "train" else 3]:
                shutil.copy(photo, data / split / category / photo.name)
    out = tmp_path / "model"
    argv = ["-q", "train", "--data", str(data), "--out", str(out), "--backbone", "timm:resnet18", "--weights",
            "random", "--epochs", "2", "--views", "1", "--batch-size", "12", "--m", "4", "--dim", "32",
            "--cache-dir", str(tmp_path / "cache"), "--workers", "0", "--patience", "0"]
    assert main(argv) == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["backbone"] == "timm:resnet18" and config["network"]["cut"] == 4  # the top stage trained
    assert config["encoder_spec"]["model_file"] == "model.onnx"
    index = tmp_path / "idx"
    assert main(["-q", "index", str(data / "train"), "--out", str(index), "--encoder", f"tuned:{out}"]) == 0
    query = next((data / "test" / "hat").glob("*.jpg"))
    capsys.readouterr()
    assert main(["search", str(query), "--index", str(index), "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)[0]["results"]
    assert len(hits) == 3 and all(np.isfinite(h["score"]) for h in hits)
    assert main(["search", "--text", "a hat", "--index", str(index)]) == 2
    assert "no text tower" in capsys.readouterr().err


def test_a_tuned_open_clip_model_says_text_search_is_no_longer_offered():
    from clothsim.encoders.spec import EncoderSpec
    from clothsim.runtimes.onnx_text import text_refusal

    spec = EncoderSpec(name="tuned:/m", dim=8, weights_id="x", identity={"backbone": "open_clip:ViT-B-32@openai"})
    message = text_refusal(spec)
    assert "fine-tuned from open_clip:ViT-B-32@openai" in message and "not offered" in message
