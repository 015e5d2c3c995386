"""Incremental sync: a changed catalogue is brought up to date by encoding only what changed.

Added photos are encoded, removed ones tombstoned, changed files (size or mtime) re-encoded, relabelled
entries keep their vector; the result equals a fresh build of the new catalogue, an interrupted sync
resumes to exactly the uninterrupted result, and every catalogue entry that is not encoded is reported.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import _tiny_encoders  # noqa: E402,F401  - registers test-thumb8

from clothsim.cli.main import main  # noqa: E402
from clothsim.data.folder import read_folder_catalog  # noqa: E402
from clothsim.data.records import CatalogRecord  # noqa: E402
from clothsim.encoders.base import l2_normalize  # noqa: E402
from clothsim.features.extract import extract_features  # noqa: E402
from clothsim.features.store import FeatureStore, StoreBusyError, UnfinishedStoreError  # noqa: E402

OPTIONS = dict(batch_size=4, num_workers=0, progress=False)


class Interrupt(RuntimeError):
    pass


def _content(store_dir: Path) -> dict[tuple, bytes]:
    """Live rows as record -> vector bytes (what a user sees, whatever the ids)."""
    store = FeatureStore.open(store_dir)
    ids = store.live_ids()
    return {repr(sorted(r.to_dict().items())): store.vector(i).tobytes()
            for i, r in zip(ids, store.records_for(ids))}


def _rows(store_dir: Path) -> list:
    """Live rows by id, for row-for-row comparisons."""
    store = FeatureStore.open(store_dir)
    ids = store.live_ids()
    return [(int(i), r, store.vector(i).tobytes()) for i, r in zip(ids, store.records_for(ids))]


def _counting(encoder):
    """Count the images the encoder is given."""
    seen = {"images": 0}
    original = encoder.embed

    def embed(batch):
        seen["images"] += int(batch.shape[0])
        return original(batch)

    encoder.embed = embed
    return seen


def _write(path: Path, colour: tuple[int, int, int], stripe: int = 0) -> None:
    img = Image.new("RGB", (20, 16), colour)
    for x in range(0, 20, 3) if stripe else ():
        for y in range(16):
            img.putpixel((x, y), (stripe, stripe, stripe))
    img.save(path)


def _changed(colour_catalog: list[CatalogRecord], tmp_path: Path) -> list[CatalogRecord]:
    """The catalogue the next morning: 3 new, 2 gone, 2 re-shot, 1 relabelled."""
    records = list(colour_catalog)
    new_dir = tmp_path / "catalog" / "new"
    new_dir.mkdir()
    for i in range(3):
        _write(new_dir / f"new_{i}.png", (90 + 40 * i, 90, 30), stripe=60)
    del records[5], records[9]
    for record in (records[0], records[12]):
        _write(Path(record.path), (1, 2, 3), stripe=200)
        stat = os.stat(record.path)
        os.utime(record.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # never the same mtime
    records[3] = replace(records[3], category="maroon")
    return records + [CatalogRecord(str(new_dir / f"new_{i}.png"), "new", split="train") for i in range(3)]


def test_a_sync_encodes_only_what_changed_and_equals_a_fresh_build(colour_catalog, tiny_encoder, tmp_path):
    extract_features(colour_catalog, tiny_encoder, tmp_path / "s", checkpoint_every=5, **OPTIONS)
    new = _changed(colour_catalog, tmp_path)
    seen = _counting(tiny_encoder)
    report = extract_features(new, tiny_encoder, tmp_path / "s", checkpoint_every=5, **OPTIONS)
    assert (report.n_added, report.n_removed, report.n_reencoded, report.n_relabelled) == (3, 2, 2, 1)
    assert report.summary() == "+3 added, -2 removed, ~2 re-encoded, 1 relabelled without re-encoding"
    assert seen["images"] == report.n_new == 5  # 3 new + 2 re-shot; the relabelled one kept its vector
    assert report.n_encoded == len(new) and not report.reused

    fresh = extract_features(new, tiny_encoder, tmp_path / "fresh", **OPTIONS)
    assert fresh.n_encoded == len(new)
    assert _content(tmp_path / "s") == _content(tmp_path / "fresh")
    store = FeatureStore.open(tmp_path / "s")
    assert store.verify().ok and store.verify().leftovers == [] and store.sync_pending is None

    again = extract_features(new, tiny_encoder, tmp_path / "s", **OPTIONS)
    assert again.reused and seen["images"] == 5 + len(new)  # the fresh build; nothing more for the re-run


def test_an_interrupted_sync_resumes_to_exactly_the_uninterrupted_result(colour_catalog, tiny_encoder, tmp_path):
    extract_features(colour_catalog, tiny_encoder, tmp_path / "base", checkpoint_every=4, **OPTIONS)
    new = _changed(colour_catalog, tmp_path)
    shutil.copytree(tmp_path / "base", tmp_path / "whole")
    extract_features(new, tiny_encoder, tmp_path / "whole", checkpoint_every=4, **OPTIONS)

    shutil.copytree(tmp_path / "base", tmp_path / "cut")
    original, calls = tiny_encoder.embed, {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint: the first (4 images) is committed
            raise Interrupt("power cut")
        return original(batch)

    tiny_encoder.embed = flaky
    with pytest.raises(Interrupt):
        extract_features(new, tiny_encoder, tmp_path / "cut", checkpoint_every=4, **OPTIONS)
    tiny_encoder.embed = original
    with pytest.raises(UnfinishedStoreError, match="run the same `clothsim index` command again"):
        FeatureStore.open(tmp_path / "cut")  # part old catalogue, part new: not served
    interrupted = FeatureStore.open(tmp_path / "cut", allow_unfinished=True)
    assert interrupted.sync_pending is not None
    assert interrupted.verify().leftovers == []  # the half-done checkpoint left nothing behind

    report = extract_features(new, tiny_encoder, tmp_path / "cut", checkpoint_every=4, **OPTIONS)
    assert report.resumed_shards >= 1 and report.n_new == 1  # 5 to encode, 4 were already committed
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "whole")
    assert FeatureStore.open(tmp_path / "cut").sync_pending is None


def test_a_checkpoint_bounds_what_an_interruption_loses(colour_catalog, tiny_encoder, tmp_path):
    original, calls = tiny_encoder.embed, {"n": 0}

    def dies_in_the_fourth_batch(batch):
        calls["n"] += 1
        if calls["n"] == 4:
            raise Interrupt()
        return original(batch)

    tiny_encoder.embed = dies_in_the_fourth_batch
    with pytest.raises(Interrupt):
        extract_features(colour_catalog, tiny_encoder, tmp_path / "s", checkpoint_every=6, batch_size=3,
                         num_workers=0, progress=False)
    store = FeatureStore.open(tmp_path / "s", allow_unfinished=True)
    assert store.total_rows == 6  # batches 1-2 made checkpoint 1; batch 3 alone was lost with batch 4
    assert len(store.segments) == 1


def test_unchanged_failures_are_not_retried_until_the_file_changes(colour_catalog, tiny_encoder, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG truncated")
    records = colour_catalog[:4] + [CatalogRecord(str(broken), "red")]
    first = extract_features(records, tiny_encoder, tmp_path / "s", **OPTIONS)
    assert [f["path"] for f in first.failures] == [str(broken)]
    assert extract_features(records, tiny_encoder, tmp_path / "s", **OPTIONS).reused
    _write(broken, (200, 10, 10))  # fixed: it is retried and encoded
    fixed = extract_features(records, tiny_encoder, tmp_path / "s", **OPTIONS)
    assert fixed.failures == [] and fixed.n_new == 1 and fixed.n_encoded == 5


def test_a_reordered_catalogue_is_already_up_to_date(colour_catalog, tiny_encoder, tmp_path):
    extract_features(colour_catalog, tiny_encoder, tmp_path / "s", **OPTIONS)
    report = extract_features(colour_catalog[::-1], tiny_encoder, tmp_path / "s", **OPTIONS)
    assert report.reused and report.n_new == 0


def test_repeated_entries_are_counted_as_entries(colour_catalog, tiny_encoder, tmp_path):
    twice = colour_catalog[:3] + colour_catalog[:1]
    assert extract_features(twice, tiny_encoder, tmp_path / "s", **OPTIONS).n_encoded == 4
    report = extract_features(colour_catalog[:3], tiny_encoder, tmp_path / "s", **OPTIONS)
    assert (report.n_removed, report.n_encoded) == (1, 3)


def test_every_entry_that_is_not_encoded_is_reported(tmp_path, tiny_encoder, capsys):
    root = tmp_path / "photos"
    (root / "shirt").mkdir(parents=True)
    for i in range(2):
        _write(root / "shirt" / f"{i}.png", (10 * i, 100, 100))
    os.symlink(root / "shirt" / "gone.png", root / "shirt" / "dangling.png")
    os.symlink(root / "shirt" / "loop.png", root / "shirt" / "loop.png")
    (root / "shirt" / "folder.jpg").mkdir()
    (root / "shirt" / "empty.jpg").write_bytes(b"")
    records = read_folder_catalog(root)
    assert len(records) == 6
    code = main(["-q", "index", str(root), "--out", str(tmp_path / "idx"), "--encoder", "test-thumb8",
                 "--runtime", "torch", "--workers", "0"])
    out = capsys.readouterr().out
    assert code == 0 and "indexed 2 images" in out
    reasons = {line.split(": ", 1)[0].split("/")[-1]: line.split(": ", 1)[1]
               for line in out.splitlines() if line.startswith("skipped ")}
    assert reasons["dangling.png"].startswith("dangling symbolic link")
    assert reasons["loop.png"] == "symbolic link loop"
    assert reasons["folder.jpg"] == "a directory, not an image file"
    assert "cannot decode" in reasons["empty.jpg"]
    assert "4 catalogue entries could not be encoded" in out


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_entry_is_reported(tmp_path, tiny_encoder):
    path = tmp_path / "secret.png"
    _write(path, (1, 2, 3))
    _write(tmp_path / "ok.png", (3, 2, 1))
    path.chmod(0)
    report = extract_features([CatalogRecord(str(path), "x"), CatalogRecord(str(tmp_path / "ok.png"), "x")],
                              tiny_encoder, tmp_path / "s", **OPTIONS)
    assert [(f["path"], f["reason"]) for f in report.failures] == [(str(path), "permission denied (not readable)")]


def _photos(tmp_path, n: int):
    """A catalogue folder of ``n`` distinct photos in one category ``a``."""
    root = tmp_path / "photos"
    (root / "a").mkdir(parents=True)
    for i in range(n):
        _write(root / "a" / f"{i}.png", (30 * i, 20, 20))
    return root


def test_the_command_prints_what_a_sync_did_and_refreshes_the_backend(tmp_path, capsys, monkeypatch):
    root = _photos(tmp_path, 3)
    argv = ["-q", "index", str(root), "--out", str(tmp_path / "idx"), "--encoder", "test-thumb8", "--runtime",
            "torch", "--workers", "0"]
    assert main(argv) == 0
    assert "synced: +3 added, -0 removed, ~0 re-encoded" in capsys.readouterr().out

    from clothsim.index import exact, registry

    calls = []
    monkeypatch.setattr(exact.ExactIndex, "refresh", lambda self: calls.append("refresh"))
    monkeypatch.setattr(exact.ExactIndex, "save", lambda self: calls.append("save"))
    monkeypatch.setattr(registry, "build_index", lambda *a, **k: pytest.fail("a sync must not rebuild the backend"))
    (root / "a" / "0.png").unlink()
    _write(root / "a" / "9.png", (200, 200, 0))
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "synced: +1 added, -1 removed, ~0 re-encoded" in out and "1 encoded now" in out
    assert calls == ["refresh", "save"]
    assert main(argv) == 0 and "already up to date: 3 images" in capsys.readouterr().out


def test_ctrl_c_leaves_nothing_behind_and_exits_130(tmp_path, capsys, monkeypatch):
    root = _photos(tmp_path, 6)
    argv = ["-q", "index", str(root), "--out", str(tmp_path / "idx"), "--encoder", "test-thumb8", "--runtime",
            "torch", "--workers", "0", "--checkpoint-every", "2", "--batch-size", "2"]
    import clothsim.features.store.writer as store_module  # where the writer writes its Parquet files

    real, calls = store_module.write_parquet, {"n": 0}

    def interrupted_write(path, table, *rest):
        calls["n"] += 1
        if calls["n"] == 2:  # in the middle of the second checkpoint, after its vectors were written
            raise KeyboardInterrupt
        return real(path, table, *rest)

    monkeypatch.setattr(store_module, "write_parquet", interrupted_write)
    assert main(argv) == 130
    store = FeatureStore.open(tmp_path / "idx", allow_unfinished=True)
    assert store.total_rows == 2 and store.verify().leftovers == []
    monkeypatch.setattr(store_module, "write_parquet", real)
    assert main(argv) == 0 and "indexed 6 images" in capsys.readouterr().out


def test_two_writers_are_refused(tmp_path):
    store = FeatureStore.create(tmp_path / "s", {"encoder": "e", "weights": "w", "dim": 4, "preprocessing": None})
    other = FeatureStore.open(tmp_path / "s")
    vectors = l2_normalize(np.ones((1, 4)))
    with store.writer():
        with pytest.raises(StoreBusyError, match="being written"):
            other.append(vectors, [CatalogRecord("a.jpg", "x")])
    assert other.append(vectors, [CatalogRecord("a.jpg", "x")]).tolist() == [0]


def test_compaction_merges_small_segments_and_changes_no_row(tmp_path):
    store = FeatureStore.create(tmp_path / "s", {"encoder": "e", "weights": "w", "dim": 4, "preprocessing": None})
    rng = np.random.default_rng(0)
    for n in range(20):
        store.append(l2_normalize(rng.normal(size=(3, 4))), [CatalogRecord(f"{n}-{i}.jpg", "ab"[i % 2])
                                                                for i in range(3)])
    store.delete([4, 30])
    before = _rows(tmp_path / "s")
    merged = store.compact(target_rows=16, min_small=8)
    assert merged == 20 and len(store.segments) == 4  # 5 + 5 + 5 + 5 segments of 3 rows
    assert _rows(tmp_path / "s") == before and FeatureStore.open(tmp_path / "s").deleted_ids.tolist() == [4, 30]
    assert store.verify().ok and store.verify().leftovers == []
    assert store.compact(target_rows=16, min_small=8) == 0  # nothing small left to merge
