"""``clothsim train-siamese`` and ``clothsim similarity`` end to end on tiny images and a tiny CNN."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from clothsim.cli.main import main
from clothsim.encoders.base import Preprocessing
from clothsim.encoders.torch_cnn import TorchCNNEncoder
from clothsim.training import fit
from clothsim.training import siamese_encoder as se


def tiny_base(name="tiny-cnn", weights=None, device="cpu", runtime="torch") -> TorchCNNEncoder:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Conv2d(3, 6, 3, stride=4, padding=1), nn.ReLU())
    return TorchCNNEncoder("tiny-cnn", 6, Preprocessing(input_size=16, resize_size=16), trunk, "tiny-v1", device)


@pytest.fixture()
def trained(tmp_path: Path, colour_catalog, monkeypatch, capsys) -> Path:
    monkeypatch.setattr(fit, "create_encoder", tiny_base)
    monkeypatch.setattr(se, "build_network", tiny_base)
    out = tmp_path / "model"
    code = main(["-q", "train-siamese", "--data", str(tmp_path / "catalog"), "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache"), "--workers", "0", "--epochs", "4", "--patience", "0",
                 "--embedding-dim", "4", "--val-fraction", "0.25", "--seed", "3"])
    assert code == 0
    assert f"--encoder siamese:{out}" in capsys.readouterr().out
    return out


def test_train_siamese_writes_the_model_folder(trained: Path) -> None:
    for name in ("siamese.pt", "config.json", "history.json", "loss.png", "accuracy.png"):
        assert (trained / name).is_file(), name
    history = json.loads((trained / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    config = json.loads((trained / "config.json").read_text())
    assert config["train_config"]["seed"] == 3 and config["train_config"]["embedding_dim"] == 4
    assert config["validation_source"].startswith("25% of train")  # the folder has no validation split
    assert config["n_train"] + config["n_validation"] == 24  # no split folders: every image is train data


def test_similarity_command(trained: Path, colour_catalog, capsys) -> None:
    capsys.readouterr()
    a, b = colour_catalog[0].path, colour_catalog[1].path
    assert main(["similarity", a, b, "--model", str(trained), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0.0 <= result["similarity"] <= 1.0
    assert result["similarity"] == pytest.approx(1 - result["distance"] ** 2 / 4, abs=1e-6)
    assert main(["similarity", a, a, "--model", str(trained)]) == 0
    assert capsys.readouterr().out.startswith("similarity 1.0000")


def test_similarity_without_a_model_folder_fails_cleanly(tmp_path: Path, colour_catalog, capsys) -> None:
    path = colour_catalog[0].path
    assert main(["similarity", path, path, "--model", str(tmp_path / "none")]) == 1
    assert "not a Siamese model folder" in capsys.readouterr().err
