"""The Siamese network with VGG16's conv5 block fine-tuned (``clothsim train-siamese --fine-tune conv5``):
a tiny real run on the bundled photos with the shared VGG16 weights, and what it writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from clothsim.cli.main import main
from clothsim.encoders import create_encoder
from clothsim.training.siamese_conv5 import CONV5_LAYERS, siamese_conv5_config

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "clothsim" / "assets" / "clothing_sample"
pytestmark = pytest.mark.slow


def test_the_preset_trains_conv5_with_the_contrastive_loss_and_max_pooling():
    config = siamese_conv5_config()
    assert (config.backbone, config.loss, config.pooling) == ("vgg16", "contrastive", "max")
    assert config.train_layers == config.cached_layers == CONV5_LAYERS == 3


def test_conv5_fine_tuning_writes_a_tuned_encoder(tmp_path, vgg16_weights, capsys):
    data = tmp_path / "data"
    for split, n in (("train", 10), ("test", 3)):
        for category in ("dress", "shoes", "hat"):
            (data / split / category).mkdir(parents=True)
            for photo in sorted((SAMPLE / split / category).glob("*.jpg"))[:n]:
                shutil.copy(photo, data / split / category / photo.name)
    out = tmp_path / "model"
    argv = ["-q", "train-siamese", "--data", str(data), "--out", str(out), "--weights", str(vgg16_weights),
            "--fine-tune", "conv5", "--epochs", "1", "--embedding-dim", "32", "--workers", "0",
            "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "test P@5:" in printed and f"--encoder tuned:{out}" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["network"]["backbone"] == "vgg16" and config["network"]["pooling"] == "max"
    assert config["network"]["train_layers"] == 3 and config["train_config"]["loss"] == "contrastive"
    encoder = create_encoder(f"tuned:{out}", runtime="torch", weights=str(vgg16_weights))
    from PIL import Image

    vectors = encoder.encode_images([Image.open(p).convert("RGB")
                                     for p in sorted((data / "test" / "hat").glob("*.jpg"))])
    assert vectors.shape == (3, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_conv5_needs_vgg16(tmp_path, capsys):
    code = main(["train-siamese", "--data", str(SAMPLE), "--out", str(tmp_path / "m"), "--encoder", "resnet50",
                 "--fine-tune", "conv5"])
    assert code == 2 and "conv5" in capsys.readouterr().err
