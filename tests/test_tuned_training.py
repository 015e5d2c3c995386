"""A tiny real training run of the tuned encoder on the bundled clothing photos, and what it produces.

One run (module fixture, about a minute on two cores) serves every test: the loss falls, validation and
held-out test P@5 rise over the untrained network and the pretrained default, the test split is read
only after training, and the model folder works as the encoder ``tuned:DIR`` in torch and ONNX Runtime,
through ``create_encoder`` and ``SimilarityIndex``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clothsim.data import read_catalog
from clothsim.demo import CLOTHING_SAMPLE_DIR
from clothsim.errors import DataError, UsageError
from clothsim.training import lower_outputs
from clothsim.training.tuned_trainer import TuneConfig, fit_tuned

pytestmark = pytest.mark.slow

CONFIG = TuneConfig(epochs=4, views=2, batch_size=32, m=4, patience=0, embedding_dim=64)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    records = read_catalog(CLOTHING_SAMPLE_DIR)
    test_paths = {r.path for r in records if r.split == "test"}
    read: list[str] = []
    test_reads_at_epoch: list[int] = []
    real_load = lower_outputs.load_image

    def recording_load(path, *args, **kwargs):
        read.append(str(path))
        return real_load(path, *args, **kwargs)

    def on_epoch(row):
        test_reads_at_epoch.append(sum(p in test_paths for p in read))

    root = tmp_path_factory.mktemp("tuned")
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lower_outputs, "load_image", recording_load)  # num_workers=0: decoding in this process
        result = fit_tuned(records, root / "model", CONFIG, runtime="torch", cache_dir=root / "cache",
                           num_workers=0, on_epoch=on_epoch)
    return {"result": result, "records": records, "read": read, "test_paths": test_paths,
            "test_reads_at_epoch": test_reads_at_epoch, "root": root}


def test_loss_falls_and_validation_precision_rises(run):
    history = run["result"].history
    train_losses = [h["train_loss"] for h in history[1:]]
    assert train_losses[-1] < train_losses[0]
    assert min(h["val_loss"] for h in history[1:]) < history[0]["val_loss"]
    best = history[run["result"].best_epoch]["val_p@5"]
    assert run["result"].best_epoch >= 1
    assert best > history[0]["val_p@5"]  # over the untrained network


def test_held_out_test_precision_beats_the_pretrained_default(run):
    report = run["result"].report
    assert report["protocol"] == {"queries": "test", "gallery": "train"}
    assert report["n_queries"] == 80 and report["n_gallery"] == 200  # of 220 train photos, 20 carved for validation
    assert report["tuned"]["precision"]["5"] > report["pretrained"]["precision"]["5"]
    md = (run["result"].out_dir / "report.md").read_text()
    assert "| dress |" in md and "pretrained default" in md


def test_test_split_is_read_only_after_training(run):
    assert run["test_reads_at_epoch"] == [0] * CONFIG.epochs
    assert {p for p in run["read"] if p in run["test_paths"]} == run["test_paths"]
    first_test_read = min(i for i, p in enumerate(run["read"]) if p in run["test_paths"])
    assert all(p in run["test_paths"] for p in run["read"][first_test_read:])


def test_model_folder_contents(run):
    out = run["result"].out_dir
    for name in ("tuned.pt", "config.json", "history.json", "curves.png", "report.json", "report.md"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["best_epoch"] == run["result"].best_epoch
    assert config["network"]["cut"] == 17 and config["network"]["train_layers"] == 1
    assert len(json.loads((out / "history.json").read_text())) == CONFIG.epochs + 1


def _photos(records, n=6):
    from clothsim.images import load_image

    return [load_image(r.path) for r in records if r.split == "test"][:n]


def test_round_trip_gives_the_training_vectors_in_torch_and_onnx(run):
    from clothsim import create_encoder
    from clothsim.training.tuned_encoder import load_tuned_encoder

    out = run["result"].out_dir
    photos = _photos(run["records"])
    torch_enc = create_encoder(f"tuned:{out}", runtime="torch")
    again = load_tuned_encoder(out)
    a, b = torch_enc.encode_images(photos), again.encode_images(photos)
    assert a.shape == (len(photos), 64)
    np.testing.assert_array_equal(a, b)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    onnx_enc = create_encoder(f"tuned:{out}", runtime="onnx")
    assert onnx_enc.runtime == "onnx"
    np.testing.assert_allclose(onnx_enc.encode_images(photos), a, atol=1e-4)
    assert torch_enc.fingerprint()["checkpoint_sha256"] == json.loads((out / "config.json").read_text())[
        "checkpoint_sha256"]


def test_tuned_family_indexes_and_searches(run, tmp_path):
    from clothsim import SimilarityIndex

    out = run["result"].out_dir
    gallery = [r for r in run["records"] if r.split == "train"][::5]
    index, report = SimilarityIndex.build(gallery, tmp_path / "index", encoder=f"tuned:{out}", runtime="torch",
                                          num_workers=0)
    assert report.n_encoded == len(gallery)
    query = gallery[3]
    hits = index.search(query.path, k=3)
    assert hits[0].record.path == query.path and hits[0].score == pytest.approx(1.0, abs=1e-4)
    reopened = SimilarityIndex.open(tmp_path / "index", runtime="torch")
    assert [h.record.path for h in reopened.search(query.path, k=3)] == [h.record.path for h in hits]


def test_bad_input_gives_clear_errors(run, tmp_path):
    from clothsim import create_encoder
    from clothsim.data.records import CatalogRecord

    with pytest.raises(FileNotFoundError, match="not a tuned model folder"):
        create_encoder(f"tuned:{tmp_path / 'missing'}", runtime="torch")
    one = [CatalogRecord(r.path, "dress", r.split) for r in run["records"][:30]]
    with pytest.raises(DataError, match="two categories"):
        fit_tuned(one, tmp_path / "m", CONFIG, runtime="torch", cache_dir=tmp_path / "c", num_workers=0)
    with pytest.raises(UsageError, match="unknown loss"):
        fit_tuned(run["records"], tmp_path / "m", TuneConfig(loss="triplet"), runtime="torch", num_workers=0)
    with pytest.raises(UsageError, match="cannot fine-tune backbone"):
        fit_tuned(run["records"], tmp_path / "m", TuneConfig(backbone="resnet50"), weights="random",
                  runtime="torch", num_workers=0)
    with pytest.raises(DataError, match="empty"):
        fit_tuned([], tmp_path / "m", CONFIG, runtime="torch")


def test_cli_train_reports_usage_errors(tmp_path, capsys):
    from clothsim.cli.main import main

    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m")]) in (1, 2)
    assert "nowhere" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m"), "--members", "2",
              "--loss", "multi-similarity,triplet"])
    assert exit_info.value.code == 2 and "unknown loss 'triplet'" in capsys.readouterr().err


def test_members_train_apart_and_average_their_cosines(run, tmp_path):
    """--members 2: two networks over the same cache (own seed, own loss), one encoder whose cosine is the
    mean of the members' cosines, in torch and ONNX Runtime."""
    from dataclasses import replace

    from clothsim import create_encoder
    from clothsim.training.tuned_encoder import load_tuned_encoder

    config = replace(CONFIG, epochs=2, members=2, loss="multi-similarity,contrastive")
    result = fit_tuned(run["records"], tmp_path / "pair", config, runtime="torch", cache_dir=run["root"] / "cache",
                       num_workers=0, evaluate_test=False)
    assert [m["loss"] for m in result.members] == ["multi-similarity", "contrastive"]
    assert [row["member"] for row in result.history] == [0, 0, 0, 1, 1, 1]
    meta = json.loads((tmp_path / "pair" / "config.json").read_text())
    assert meta["members"] == 2 and meta["member_runs"] == result.members and meta["network"]["embedding_dim"] == 64
    assert (tmp_path / "pair" / "curves.png").stat().st_size > 0

    photos = _photos(run["records"])
    encoder = load_tuned_encoder(tmp_path / "pair")
    together = encoder.encode_images(photos)
    assert together.shape == (len(photos), 128)
    members = encoder.graph.network.members
    with torch.no_grad():
        batch = torch.from_numpy(np.stack([encoder.transform(p) for p in photos]))
        lower = encoder.graph.lower(batch)
        alone = [member(lower).numpy() for member in members]
    np.testing.assert_allclose(together @ together.T, np.mean([a @ a.T for a in alone], axis=0), atol=1e-5)
    assert not np.allclose(alone[0], alone[1], atol=1e-2)  # they did learn apart
    onnx_enc = create_encoder(f"tuned:{tmp_path / 'pair'}", runtime="onnx")
    assert onnx_enc.runtime == "onnx"
    np.testing.assert_allclose(onnx_enc.encode_images(photos), together, atol=1e-4)


def test_training_options_are_checked_before_any_work(run, tmp_path):
    from dataclasses import replace

    for bad, message in ((replace(CONFIG, members=0), "members"), (replace(CONFIG, schedule="step"), "schedule"),
                         (replace(CONFIG, ema=1.0), "ema"), (replace(CONFIG, members=2, loss="multi-similarity,triplet"),
                                                              "triplet")):
        with pytest.raises(UsageError, match=message):
            fit_tuned(run["records"], tmp_path / "m", bad, runtime="torch", cache_dir=tmp_path / "c", num_workers=0)
    assert not (tmp_path / "c").exists() and not (tmp_path / "m").exists()


def test_cosine_schedule_and_weight_average_train(run, tmp_path):
    from dataclasses import replace

    config = replace(CONFIG, epochs=2, schedule="cosine", ema=0.9)
    result = fit_tuned(run["records"], tmp_path / "ema", config, runtime="torch", cache_dir=run["root"] / "cache",
                       num_workers=0, evaluate_test=False)
    assert result.val_precision == result.history[result.best_epoch]["val_p@5"]
    assert result.val_precision > result.history[0]["val_p@5"]


def test_refit_trains_again_on_train_and_validation_for_the_chosen_epochs(run, tmp_path):
    """--refit: validation picks each member's epochs; then fresh networks learn from train and validation
    together for that many epochs and are saved. The test split is still not read."""
    from dataclasses import replace

    from clothsim.training.tuned_encoder import load_tuned_encoder
    from clothsim.training.tuned_trainer import assign_splits

    assert run["result"].refit == [] and "refit" not in json.loads((run["result"].out_dir / "config.json").read_text())
    records = run["records"]
    # The sample has train and test folders; validation is carved out of train, as fit_tuned does.
    val_paths = {r.path for r in assign_splits(records, CONFIG.val_fraction, CONFIG.test_fraction, CONFIG.seed)
                 if r.split == "validation"}
    assert len(val_paths) == 20
    read: list[str] = []
    real_load = lower_outputs.load_image

    def recording_load(path, *args, **kwargs):
        read.append(str(path))
        return real_load(path, *args, **kwargs)

    config = replace(CONFIG, epochs=3, members=2, loss="multi-similarity,contrastive", refit=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lower_outputs, "load_image", recording_load)
        result = fit_tuned(records, tmp_path / "refit", config, runtime="torch", cache_dir=run["root"] / "cache",
                           num_workers=0, evaluate_test=False)
    assert [r["member"] for r in result.refit] == [0, 1]
    assert [r["epochs"] for r in result.refit] == [m["best_epoch"] for m in result.members]
    assert all(len(r["train_loss"]) == r["epochs"] for r in result.refit)
    assert {r["rows"] for r in result.refit} == {200 + 20}  # the 200 train and 20 validation photos
    # The validation photos were decoded once more, now with augmented views to learn from; no test photo was.
    assert set(read) == val_paths and not any(p in run["test_paths"] for p in read)
    meta = json.loads((tmp_path / "refit" / "config.json").read_text())
    assert meta["refit"] == result.refit and meta["train_config"]["refit"] is True
    vectors = load_tuned_encoder(tmp_path / "refit").encode_images(_photos(records))
    assert vectors.shape == (6, 128) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_the_model_folder_searches_without_torch(run, tmp_path):
    """Training saved the network as model.onnx: indexing and searching with tuned:<folder> then needs no
    torch, and gives the torch network's vectors."""
    from _no_torch import no_torch

    from clothsim.encoders import create_encoder

    folder = run["root"] / "model"
    assert (folder / "model.onnx").is_file()
    assert json.loads((folder / "config.json").read_text())["encoder_spec"]["model_file"] == "model.onnx"
    catalogue = tmp_path / "catalogue"
    for record in run["records"][:12]:
        target = catalogue / record.category / Path(record.path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(record.path).read_bytes())
    index = tmp_path / "idx"
    built = no_torch("clothsim", "-q", "index", str(catalogue), "--out", str(index), "--encoder", f"tuned:{folder}")
    assert built.returncode == 0, built.stderr
    query = sorted(catalogue.glob("*/*"))[0]
    found = no_torch("clothsim", "search", str(query), "--index", str(index), "-k", "1", "--json")
    assert found.returncode == 0, found.stderr
    hit = json.loads(found.stdout)[0]["results"][0]
    assert hit["path"] == str(query) and hit["score"] > 0.999
    # The stored vectors are the torch network's.
    from clothsim.features.store import FeatureStore

    vectors, items = FeatureStore.open(index).load_vectors()
    network = create_encoder(f"tuned:{folder}", runtime="torch")
    expected = network.encode_images([_load(it.record.path) for it in items])
    assert np.sum(vectors * expected, axis=1).min() >= 0.9999


def _load(path):
    from clothsim.images import load_image

    return load_image(path)
