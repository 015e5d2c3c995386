"""Parts of the tuned encoder that need no training run: losses, sampler, pooling, splits, cuts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clothsim.data.records import CatalogRecord
from clothsim.errors import DataError, UsageError
from clothsim.training.lower_outputs import AugmentConfig, hash_seed
from clothsim.training.tuned_losses import LOSSES, build_loss
from clothsim.training.tuned_model import GeM, check_cut
from clothsim.training.tuned_sampler import MPerClassBatches
from clothsim.training.tuned_trainer import assign_splits


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(13, 6, generator=gen), dim=1)
    return emb, torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 0, 2])


def test_multi_similarity_matches_a_naive_loop():
    emb, labels = _batch()
    sim = (emb @ emb.T).tolist()
    per_anchor = []
    for i in range(len(labels)):
        pos = [sim[i][j] for j in range(len(labels)) if j != i and labels[j] == labels[i]]
        neg = [sim[i][j] for j in range(len(labels)) if labels[j] != labels[i]]
        per_anchor.append(math.log(1 + sum(math.exp(-2.0 * (s - 0.5)) for s in pos)) / 2.0
                          + math.log(1 + sum(math.exp(50.0 * (s - 0.5)) for s in neg)) / 50.0)
    loss = build_loss("multi-similarity", 4, 6).loss  # without the miner: every pair counts
    assert float(loss(emb, labels)) == pytest.approx(sum(per_anchor) / len(per_anchor), rel=1e-5)


def test_contrastive_matches_a_naive_loop():
    emb, labels = _batch(1)
    sim = (emb @ emb.T).tolist()
    n = len(labels)
    pos = [max(0.0, 1.0 - sim[i][j]) for i in range(n) for j in range(n) if i != j and labels[i] == labels[j]]
    neg = [max(0.0, sim[i][j] - 0.5) for i in range(n) for j in range(n) if labels[i] != labels[j]]
    pos, neg = [v for v in pos if v > 0], [v for v in neg if v > 0]  # pml averages the non-zero terms
    expected = sum(pos) / len(pos) + sum(neg) / len(neg)
    assert float(build_loss("contrastive", 4, 6)(emb, labels)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_gives_a_finite_gradient(name):
    emb, labels = _batch(2)
    emb.requires_grad_(True)
    loss = build_loss(name, 4, 6)(emb, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(emb.grad).all()


def test_unknown_loss_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown loss 'triplet'.*multi-similarity"):
        build_loss("triplet", 4, 6)


def test_sampler_gives_m_images_of_each_class_per_batch():
    labels = np.array(["a"] * 30 + ["b"] * 7 + ["c"] * 12 + ["d"] * 3 + ["e"] * 1)
    sampler = MPerClassBatches(labels, m=4, batch_size=12, seed=3)
    batches = list(sampler.batches(epoch=1))
    assert len(batches) == len(sampler) == len(labels) // 12
    for rows in batches:
        classes, counts = np.unique(labels[rows], return_counts=True)
        assert len(classes) == 3 and set(counts) == {4}
        assert "e" not in classes  # a class with one image has no positive pair
        for c in classes:  # distinct images where the class has enough
            picked = rows[labels[rows] == c]
            if (labels == c).sum() >= 4:
                assert len(set(picked.tolist())) == 4
    # Seeded: the same epoch draws the same batches, another epoch others.
    assert all((a == b).all() for a, b in zip(batches, sampler.batches(epoch=1)))
    assert any((a != b).any() for a, b in zip(batches, sampler.batches(epoch=2)))


def test_sampler_rejects_bad_settings():
    with pytest.raises(UsageError):
        MPerClassBatches(["a", "a", "b", "b"], m=1)
    with pytest.raises(UsageError):
        MPerClassBatches(["a", "a", "b", "b"], m=4, batch_size=10)
    with pytest.raises(DataError, match="two categories"):
        MPerClassBatches(["a"] * 10 + ["b"], m=2, batch_size=8)


def test_gem_is_average_pooling_at_p1_and_tends_to_max():
    x = torch.rand(2, 5, 4, 3) + 0.01
    assert torch.allclose(GeM(1.0)(x), x.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(GeM(60.0)(x), x.amax(dim=(2, 3)), rtol=0.1)
    assert GeM(3.0, learn=False).p.requires_grad is False


def test_max_pooling_is_the_siamese_studys_global_max():
    from torch import nn

    from clothsim.training.tuned_model import NetworkConfig, TunedNetwork

    network = TunedNetwork([nn.Identity()], 4, NetworkConfig(backbone="vgg16", pooling="max", train_layers=0,
                                                             embedding_dim=2))
    x = torch.rand(3, 4, 5, 5)
    assert torch.equal(network.features(x), x.amax(dim=(2, 3)))


def test_cut_and_layer_counts_are_checked():
    check_cut(18, 16, 2)
    with pytest.raises(UsageError, match="cut"):
        check_cut(18, 0, 0)
    with pytest.raises(UsageError, match="train_layers"):
        check_cut(18, 16, 3)


def test_splits_are_carved_per_category_when_missing():
    records = [CatalogRecord(f"{c}{i}.jpg", c) for c in "abc" for i in range(20)]
    split = assign_splits(records, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert [r.path for r in split] == [r.path for r in records]
    for c in "abc":
        counts = {s: sum(1 for r in split if r.category == c and r.split == s) for s in ("train", "validation", "test")}
        assert counts == {"train": 14, "validation": 2, "test": 4}
    assert assign_splits(split, 0.1, 0.2, 0) == split  # given splits are kept


def test_view_seeds_are_stable_and_distinct():
    assert hash_seed(0, "a.jpg", 1) == hash_seed(0, "a.jpg", 1)
    assert len({hash_seed(0, "a.jpg", v) for v in range(5)} | {hash_seed(1, "a.jpg", 1)}) == 6
    with pytest.raises(UsageError):
        from clothsim.encoders.base import Preprocessing
        from clothsim.training.lower_outputs import build_view_transform

        build_view_transform(Preprocessing(), AugmentConfig(min_scale=0.0))
