"""Weights plumbing: reading state-dict files, checked loading, the download cache, seeded builds."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from clothsim.encoders import weights as W
from clothsim.errors import WeightsUnavailableError


class SmallNet(nn.Module):
    """Laid out like torchvision's VGG: a ``features`` trunk and a ``classifier``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.classifier = nn.Linear(4, 2)


def small_net() -> SmallNet:
    return SmallNet()


def test_read_state_dict_strips_module_prefix_and_unwraps_checkpoint(tmp_path: Path) -> None:
    state = small_net().state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded = W.read_state_dict(path)
    assert list(loaded) == list(state)
    assert torch.equal(loaded["features.0.weight"], state["features.0.weight"])


def test_read_state_dict_rejects_garbage_and_non_tensors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="garbage.pth"):
        W.read_state_dict(garbage)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pth"):
        W.read_state_dict(empty)
    odd = tmp_path / "odd.pth"
    torch.save({"weight": [1, 2, 3]}, odd)
    with pytest.raises(ValueError, match="'weight' is not a tensor"):
        W.read_state_dict(odd)


def test_read_state_dict_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match="nope.pth does not exist"):
        W.read_state_dict(tmp_path / "nope.pth")


def test_load_checked_accepts_trunk_only_without_prefix() -> None:
    source = small_net()
    trunk_only = source.features.state_dict()  # keys "0.weight", ...: a trunk saved on its own
    target = small_net()
    W.load_checked(target, trunk_only, source="x", ignore_prefixes=("classifier.",), trunk_prefix="features.")
    assert torch.equal(target.features[0].weight, source.features[0].weight)
    assert torch.equal(target.features[1].running_var, source.features[1].running_var)


def test_load_checked_ignores_classifier_of_another_shape() -> None:
    state = small_net().state_dict()
    state["classifier.weight"] = torch.zeros(10, 4)  # fine-tuned to 10 classes: irrelevant for embeddings
    state["classifier.bias"] = torch.zeros(10)
    target = small_net()
    W.load_checked(target, state, source="x", ignore_prefixes=("classifier.",))
    assert target.classifier.weight.shape == (2, 4)


def test_load_checked_tolerates_missing_batchnorm_counter() -> None:
    state = {k: v for k, v in small_net().state_dict().items() if not k.endswith("num_batches_tracked")}
    W.load_checked(small_net(), state, source="old.pth", ignore_prefixes=("classifier.",))


def test_load_checked_names_missing_unexpected_and_misshapen_keys() -> None:
    state = small_net().state_dict()
    missing = {k: v for k, v in state.items() if k != "features.1.running_mean"}
    with pytest.raises(ValueError, match=r"f\.pth: 1 of .* missing, first: features\.1\.running_mean"):
        W.load_checked(small_net(), missing, source="f.pth")
    extra = dict(state, **{"features.2.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"f\.pth: 1 keys .* first: features\.2\.weight"):
        W.load_checked(small_net(), extra, source="f.pth")
    wrong = dict(state, **{"features.0.weight": torch.zeros(4, 3, 5, 5)})
    with pytest.raises(
        ValueError, match=r"shape mismatch .*features\.0\.weight \(4, 3, 5, 5\) != \(4, 3, 3, 3\)"
    ):
        W.load_checked(small_net(), wrong, source="f.pth")


def test_build_from_state_on_meta_then_materialize() -> None:
    source = small_net()
    model = W.build_from_state(small_net, source.state_dict(), source="x", ignore_prefixes=("classifier.",))
    assert torch.equal(model.features[0].weight, source.features[0].weight)
    assert model.classifier.weight.is_meta  # the ignored classifier never got storage
    assert W.materialize_leftovers(model) == ["classifier.weight", "classifier.bias"]
    assert not model.classifier.weight.is_meta and model.classifier.weight.abs().sum() == 0


def test_build_seeded_is_repeatable_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = W.build_seeded(small_net), W.build_seeded(small_net)
    assert torch.equal(torch.random.get_rng_state(), before)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_load_weights_variants(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(small_net().state_dict(), path)

    def official() -> tuple[Path, str]:
        return path, "OFFICIAL_TAG"

    assert W.load_weights("random", official)[:2] == (None, "random")
    state, weights_id, source = W.load_weights(None, official)
    assert weights_id == "OFFICIAL_TAG" and source == str(path) and "features.0.weight" in state
    _, weights_id, _ = W.load_weights(str(path), official)
    assert weights_id == hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@pytest.fixture()
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server, so the download path is tested without the internet."""
    root = tmp_path / "served"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def test_download_checks_hash_and_caches(
    http_root: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, root = http_root
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    payload = b"weights" * 1000
    digest = hashlib.sha256(payload).hexdigest()
    (root / f"net-{digest[:8]}.pth").write_bytes(payload)
    got = W.download_to_cache(f"{base}/net-{digest[:8]}.pth")
    assert got == tmp_path / "torch" / "hub" / "checkpoints" / f"net-{digest[:8]}.pth"
    assert got.read_bytes() == payload
    (root / f"net-{digest[:8]}.pth").unlink()  # a second call must use the cache, not the server
    assert W.download_to_cache(f"{base}/net-{digest[:8]}.pth") == got

    (root / "bad-00000000.pth").write_bytes(payload)
    with pytest.raises(WeightsUnavailableError, match="does not start with 00000000"):
        W.download_to_cache(f"{base}/bad-00000000.pth")
    assert sorted(p.name for p in got.parent.iterdir()) == [got.name]  # no partial file left


def test_download_failure_says_what_to_put_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(W, "DOWNLOAD_TIMEOUT_S", 2.0)
    # Port 9 (discard) on the loopback: refused at once, a real socket error without the internet.
    url = "http://127.0.0.1:9/net-1234abcd.pth"
    with pytest.raises(WeightsUnavailableError) as info:
        W.download_to_cache(url, hint="; or pass --weights PATH")
    message = str(info.value)
    assert url in message
    assert str(tmp_path / "hub" / "checkpoints" / "net-1234abcd.pth") in message
    assert "--weights PATH" in message
    assert list((tmp_path / "hub" / "checkpoints").iterdir()) == []
