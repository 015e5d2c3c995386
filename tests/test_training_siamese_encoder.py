"""A trained model folder as an encoder: checkpoint round trip, fingerprint, index and search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import default_collate

from clothsim.similarity_index import SimilarityIndex
from clothsim.encoders.base import Preprocessing
from clothsim.encoders.registry import create_encoder
from clothsim.encoders.torch_cnn import TorchCNNEncoder
from clothsim.features.store import fingerprint_mismatch
from clothsim.images import load_image
from clothsim.training import siamese_encoder as se
from clothsim.training.checkpoint import load_model, save_model
from clothsim.training.distance import similarity_from_cosine
from clothsim.training.model import BranchConfig, SiameseNetwork, global_max_pool


def tiny_base(weights=None, device="cpu") -> TorchCNNEncoder:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Conv2d(3, 6, 3, stride=4, padding=1), nn.ReLU())
    return TorchCNNEncoder("tiny-cnn", 6, Preprocessing(input_size=16, resize_size=16), trunk,
                           "tiny-v1" if weights is None else str(weights), device)


def make_model_dir(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = SiameseNetwork(BranchConfig(in_channels=6, embedding_dim=3, dropout=0.0))
    base = tiny_base()
    save_model(path, model, {"base_encoder": "tiny-cnn", "base_weights": None,
                             "base_fingerprint": base.fingerprint(), "threshold": 0.8}, history=[])
    return path


@pytest.fixture(autouse=True)
def tiny_registry(monkeypatch):
    monkeypatch.setattr(se, "build_network", lambda name, weights=None, device="cpu": tiny_base(weights, device))


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    folder = make_model_dir(tmp_path / "m")
    model, meta = load_model(folder)
    torch.manual_seed(0)
    original = SiameseNetwork(BranchConfig(in_channels=6, embedding_dim=3, dropout=0.0))
    for key, value in original.state_dict().items():
        assert torch.equal(value, model.state_dict()[key])
    stamped = json.loads((folder / "config.json").read_text())["checkpoint_sha256"]
    assert meta["checkpoint_sha256"] == stamped and len(stamped) == 64
    assert not any(p.name.endswith(".tmp") for p in folder.iterdir())


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train-siamese"):
        load_model(tmp_path)
    folder = make_model_dir(tmp_path / "m")
    torch.save({"something": "else"}, folder / "siamese.pt")
    with pytest.raises(ValueError, match="not a clothsim Siamese checkpoint"):
        load_model(folder)


def test_encoder_from_registry_embeds_like_the_model(tmp_path: Path, colour_catalog) -> None:
    folder = make_model_dir(tmp_path / "m")
    encoder = create_encoder(f"siamese:{folder}")
    assert encoder.name == f"siamese:{folder.resolve()}" and encoder.dim == 3
    images = [load_image(r.path) for r in colour_catalog[:5]]
    vectors = encoder.encode_images(images)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)
    batch = default_collate([encoder.transform(img) for img in images])
    model, _ = load_model(folder)
    expected = model.embed(global_max_pool(tiny_base().feature_maps(batch)))
    np.testing.assert_allclose(vectors, expected.detach().numpy(), rtol=1e-5, atol=1e-6)
    # The pair score is the cosine of the unit embeddings on the shared [0, 1] scale.
    similarity, distance = encoder.pair_similarity(images[0], images[3])
    assert similarity == pytest.approx(similarity_from_cosine(float(vectors[0] @ vectors[3])), abs=1e-5)
    assert distance == pytest.approx(float(np.linalg.norm(vectors[0] - vectors[3])), abs=1e-5)


def test_fingerprint_follows_the_checkpoint(tmp_path: Path) -> None:
    first = se.load_siamese_encoder(make_model_dir(tmp_path / "m", seed=0))
    same = se.load_siamese_encoder(tmp_path / "m")
    assert not fingerprint_mismatch(first.fingerprint(), same.fingerprint())
    retrained = se.load_siamese_encoder(make_model_dir(tmp_path / "m", seed=1))
    assert "weights" in fingerprint_mismatch(first.fingerprint(), retrained.fingerprint())


def test_wrong_base_weights_refused(tmp_path: Path) -> None:
    folder = make_model_dir(tmp_path / "m")
    with pytest.raises(ValueError, match="trained on"):
        se.load_siamese_encoder(folder, weights="other-weights")


def test_index_and_search_rank_by_trained_distance(tmp_path: Path, colour_catalog) -> None:
    folder = make_model_dir(tmp_path / "m")
    gallery = [r for r in colour_catalog if r.split == "train"]
    catalog, report = SimilarityIndex.build(gallery, tmp_path / "index", encoder=f"siamese:{folder}", num_workers=0,
                                    progress=False)
    assert report.n_encoded == len(gallery)
    reopened = SimilarityIndex.open(tmp_path / "index")  # rebuilt from the store's stamp via the registry
    query = colour_catalog[-1].path
    hits = reopened.search(query, k=len(gallery))
    encoder = catalog.encoder
    q = encoder.encode_images([load_image(query)])[0]
    distances = [np.linalg.norm(q - encoder.encode_images([load_image(h.record.path)])[0]) for h in hits]
    assert np.all(np.diff(distances) >= -1e-5)  # cosine order == Euclidean order
