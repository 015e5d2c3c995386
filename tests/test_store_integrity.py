"""Integrity: every kind of damage is refused with an error naming the file and the repair, or repaired.

The corruption matrix, through the real commands (``clothsim search``,
``verify``, ``index``, ``serve``) and the Python API: bytes overwritten, NaN rows, shuffled rows, cut
files, empty files, damaged metadata and tombstones, manifests that are not manifests; plus stores of
format 1 (read as they are, converted by the first write) and of a newer format (refused).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import _tiny_encoders  # noqa: E402,F401  - registers test-thumb8

from clothsim.cli.main import main  # noqa: E402
from clothsim.data.records import CatalogRecord  # noqa: E402
from clothsim.encoders.base import l2_normalize  # noqa: E402
from clothsim.errors import StaleStoreError  # noqa: E402
from clothsim.features.store import (  # noqa: E402
    FeatureStore,
    StoreIntegrityError,
    check_unit_vectors,
)
from clothsim.index.exact import ExactIndex  # noqa: E402

ENCODER = ["--encoder", "test-thumb8", "--runtime", "torch", "--workers", "0", "--checkpoint-every", "4"]
FP = {"encoder": "e", "weights": "w", "dim": 4, "preprocessing": None}


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("integrity") / "photos"
    rng = np.random.default_rng(0)
    for category in ("red", "blue", "green"):
        (root / category).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / category / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def pristine(catalogue, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pristine") / "index"
    assert main(["-q", "index", str(catalogue), "--out", str(out), *ENCODER]) == 0
    assert len(FeatureStore.open(out).segments) == 3
    return out


@pytest.fixture()
def index(pristine, tmp_path) -> Path:
    copy = tmp_path / "index"
    shutil.copytree(pristine, copy)
    return copy


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def search(capsys, catalogue: Path, index: Path) -> tuple[int, str, str]:
    return run(capsys, "search", str(catalogue / "red" / "0.png"), "--index", str(index), "--runtime", "torch")


def segment(index: Path, n: int, suffix: str = ".npy") -> Path:
    return FeatureStore.open(index, verify=False).segments[n].vectors_path.with_suffix(suffix)


def _overwrite_rows(path: Path, fill) -> None:
    array = np.load(path)
    fill(array)
    header = path.stat().st_size - array.nbytes
    with open(path, "r+b") as fh:
        fh.seek(header)
        fh.write(array.tobytes())


# ----- the corruption matrix ----------------------------------------------------------------------------------
DAMAGE = {
    "random bytes in vectors": lambda p: _overwrite_rows(p, lambda a: a.__setitem__(
        slice(None), np.frombuffer(np.random.default_rng(1).bytes(a.nbytes), dtype=a.dtype).reshape(a.shape))),
    "NaN rows": lambda p: _overwrite_rows(p, lambda a: a.__setitem__(1, np.nan)),
    "shuffled rows": lambda p: _overwrite_rows(p, lambda a: a.__setitem__(slice(None), a[::-1].copy())),
    "cut short": lambda p: p.write_bytes(p.read_bytes()[:-100]),
    "zero bytes": lambda p: p.write_bytes(b""),
    "deleted": lambda p: p.unlink(),
    # One bit in the header's dict text: numpy's header parser then raises tokenize.TokenError.
    "header bit flipped": lambda p: p.write_bytes(_flip(p.read_bytes(), 10)),
}


def _flip(data: bytes, at: int) -> bytes:
    damaged = bytearray(data)
    damaged[at] ^= 1
    return bytes(damaged)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_vectors_are_refused_naming_the_file_and_the_repair(capsys, catalogue, index, damage):
    path = segment(index, 1)
    DAMAGE[damage](path)
    code, out, err = search(capsys, catalogue, index)
    assert code == 1 and not out, (out, err)
    assert str(path) in err and "clothsim index" in err and "--overwrite" in err
    assert "Traceback" not in err

    code, out, _ = run(capsys, "verify", str(index))
    assert code == 1 and f"DAMAGED {path}" in out and "clothsim index" in out


@pytest.mark.parametrize("damage", ["random bytes in vectors", "NaN rows"])
def test_a_large_store_unverified_at_open_still_never_ranks_damage(index, damage):
    # Above the size checked at every open, only sizes and headers are; scores out of range are caught.
    path = segment(index, 1)
    DAMAGE[damage](path)
    store = FeatureStore.open(index, verify=False)
    with pytest.raises(StoreIntegrityError, match=str(path)):
        ExactIndex(store).search(l2_normalize(np.ones((1, store.dim))), k=3)


@pytest.mark.parametrize("damage", ["random bytes in vectors", "shuffled rows", "cut short", "zero bytes", "deleted",
                                    "header bit flipped"])
def test_index_again_repairs_by_re_encoding_only_the_damaged_segment(capsys, catalogue, index, pristine, damage):
    DAMAGE[damage](segment(index, 1))
    code, out, err = run(capsys, "-q", "index", str(catalogue), "--out", str(index), *ENCODER)
    assert code == 0, err
    assert "repaired" in out and "+4 added" in out  # the 4 rows of the dropped segment, encoded again
    assert "4 encoded now" in out
    assert run(capsys, "verify", str(index))[0] == 0
    fixed, original = FeatureStore.open(index), FeatureStore.open(pristine)
    by_path = lambda s: {r.path: s.vector(i).tobytes() for i, r in zip(s.live_ids(), s.records_for(s.live_ids()))}
    assert by_path(fixed) == by_path(original)
    assert search(capsys, catalogue, index)[0] == 0


@pytest.mark.parametrize("damage", ["garbage", "cut short", "rows changed"])
def test_damaged_metadata_is_refused_then_repaired(capsys, catalogue, index, damage):
    path = segment(index, 0, ".parquet")
    if damage == "garbage":
        path.write_bytes(b"PAR1" + b"\x00" * 50 + b"PAR1")
    elif damage == "cut short":
        path.write_bytes(path.read_bytes()[:-20])
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 3] ^= 0xFF
        path.write_bytes(bytes(data))
    code, _, err = search(capsys, catalogue, index)
    assert code == 1 and str(path) in err and "Traceback" not in err
    code, out, _ = run(capsys, "-q", "index", str(catalogue), "--out", str(index), *ENCODER)
    assert code == 0 and "repaired" in out and run(capsys, "verify", str(index))[0] == 0


def test_damaged_tombstones_are_refused_then_recomputed_from_the_catalogue(capsys, catalogue, tmp_path):
    removed = tmp_path / "photos"
    shutil.copytree(catalogue, removed)
    index = tmp_path / "index"
    assert run(capsys, "-q", "index", str(removed), "--out", str(index), *ENCODER)[0] == 0
    (removed / "red" / "3.png").unlink()
    assert run(capsys, "-q", "index", str(removed), "--out", str(index), *ENCODER)[0] == 0
    store = FeatureStore.open(index)
    tomb = store._tombstone_path()
    assert tomb is not None and len(store.deleted_ids) == 1
    tomb.write_bytes(tomb.read_bytes()[:-8])
    code, _, err = search(capsys, removed, index)
    assert code == 1 and str(tomb) in err
    code, out, _ = run(capsys, "-q", "index", str(removed), "--out", str(index), *ENCODER)
    assert code == 0 and "repaired" in out
    healed = FeatureStore.open(index)
    assert len(healed) == 11 and all(r.path != str(removed / "red" / "3.png")
                                     for r in healed.records_for(healed.live_ids()))


MANIFESTS = {
    "empty list": b"[]",
    "segments not a list": None,  # filled in by the test
    "not JSON": b"{\"format_version\": 2, ",
    "zero bytes": b"",
    "binary": bytes(range(256)),
    "edited by hand": None,
    "format number damaged": None,
}


@pytest.mark.parametrize("case", sorted(MANIFESTS))
def test_a_broken_manifest_is_refused_and_overwrite_rebuilds_over_it(capsys, catalogue, index, case):
    path = index / "manifest.json"
    if case == "segments not a list":
        manifest = json.loads(path.read_text())
        manifest["segments"] = "abc"
        path.write_text(json.dumps(manifest))
    elif case == "edited by hand":
        manifest = json.loads(path.read_text())
        manifest["segments"][0]["rows"] -= 1
        path.write_text(json.dumps(manifest))
    elif case == "format number damaged":  # 3 read as 1, the format that had no checksum
        path.write_text(path.read_text().replace('"format_version": 3', '"format_version": 1'))
    else:
        path.write_bytes(MANIFESTS[case])
    for argv in (["search", str(catalogue / "red" / "0.png"), "--index", str(index), "--runtime", "torch"],
                 ["verify", str(index)],
                 ["-q", "index", str(catalogue), "--out", str(index), *ENCODER]):
        code, out, err = run(capsys, *argv)
        assert code == 1 and str(path) in err and "--overwrite" in err and "Traceback" not in err, (argv, err)
    code, out, err = run(capsys, "-q", "index", str(catalogue), "--out", str(index), *ENCODER, "--overwrite")
    assert code == 0 and "indexed 12 images" in out, err
    assert run(capsys, "verify", str(index))[0] == 0
    assert not list(index.parent.glob("index.*"))  # the rebuild was swapped in, nothing beside it


def test_serve_refuses_to_start_on_a_damaged_index(capsys, monkeypatch, index):
    pytest.importorskip("fastapi")
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server must not start"))
    DAMAGE["shuffled rows"](segment(index, 2))
    # Opened without the checksums a small store gets at every open, as a big index would be: the
    # server's start-up must then verify it in full by itself.
    from clothsim.similarity_index import SimilarityIndex

    def open_unverified(cls, path, **options):
        store = FeatureStore.open(path, verify=False)
        return SimilarityIndex(store, _tiny_encoders.ThumbnailEncoder("test-thumb8", 8, 0.5), ExactIndex(store))

    monkeypatch.setattr(SimilarityIndex, "open", classmethod(open_unverified))
    code, _, err = run(capsys, "serve", "--index", str(index))
    assert code == 1 and str(segment(index, 2)) in err and "checksum" in err


def test_vectors_that_are_not_finite_unit_vectors_are_refused_at_write_time(tmp_path):
    store = FeatureStore.create(tmp_path / "s", FP)
    good = l2_normalize(np.random.default_rng(0).normal(size=(3, 4)))
    for bad in (np.nan, np.inf, 5.0):
        rows = good.copy()
        rows[1] = bad
        with pytest.raises(ValueError, match="1 of 3 vectors are not finite unit vectors .first: row 1"):
            store.append(rows, [CatalogRecord(f"{i}.jpg", "a") for i in range(3)])
    assert store.total_rows == 0 and not list((tmp_path / "s" / "segments").iterdir())
    with pytest.raises(ValueError):
        check_unit_vectors(np.zeros((2, 4)))


def test_a_store_written_by_a_newer_clothsim_is_refused(tmp_path):
    store = FeatureStore.create(tmp_path / "s", FP)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    manifest["format_version"] = 99
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StaleStoreError, match="newer clothsim .store format 99"):
        FeatureStore.open(store.root)


# ----- format 1 (the layout before checksums and Parquet) --------------------------------------------------
def write_format1(root: Path, n: int = 6, deleted: list[int] | None = None) -> np.ndarray:
    """A store as clothsim 0.x wrote it: JSON-lines metadata, no checksums, deleted.npy at the root."""
    vectors = l2_normalize(np.random.default_rng(3).normal(size=(n, 4))).astype(np.float32)
    (root / "segments").mkdir(parents=True)
    cut = n // 2
    segments = []
    for name, lo, hi in (("000000", 0, cut), ("000001", cut, n)):
        np.save(root / "segments" / f"{name}.npy", vectors[lo:hi])
        with open(root / "segments" / f"{name}.jsonl", "w") as fh:
            for i in range(lo, hi):
                fh.write(json.dumps(CatalogRecord(f"/nowhere/{i}.jpg", "ab"[i % 2], item_id=str(i)).to_dict()) + "\n")
        segments.append({"name": name, "id_start": lo, "rows": hi - lo})
    if deleted:
        np.save(root / "deleted.npy", np.array(deleted, dtype=np.int64))
    (root / "manifest.json").write_text(json.dumps({
        "format_version": 1, "clothsim_version": "0.1.0", "fingerprint": FP, "dtype": "float32",
        "segments": segments, "next_id": n, "failures": [], "source_hash": "abc", "created": "then"}))
    return vectors


def test_a_format_1_store_opens_as_it_is(tmp_path):
    vectors = write_format1(tmp_path / "old", deleted=[2])
    store = FeatureStore.open(tmp_path / "old")
    assert store.is_legacy and len(store) == 5 and store.deleted_ids.tolist() == [2]
    assert [r.item_id for r in store.records_for(store.live_ids())] == ["0", "1", "3", "4", "5"]
    codes, names = store.category_codes()
    assert names == ["a", "b"] and codes.tolist() == [0, 1, 0, 1, 0, 1]
    hits = ExactIndex(store).search(vectors[4:5], k=2)[0]
    assert hits[0].id == 4 and hits[0].score == pytest.approx(1.0, abs=1e-6)
    report = store.verify()
    assert report.ok and not report.checksums  # format 1 has none: its vectors' norms were checked instead
    assert not (tmp_path / "old" / "segments" / "000000.parquet").exists()  # reading never writes


def test_the_first_write_converts_a_format_1_store_in_one_commit(tmp_path):
    vectors = write_format1(tmp_path / "old", deleted=[2])
    store = FeatureStore.open(tmp_path / "old")
    store.delete([5])
    reopened = FeatureStore.open(tmp_path / "old")
    assert not reopened.is_legacy and reopened.manifest["upgraded_from"] == 1
    assert reopened.deleted_ids.tolist() == [2, 5]
    assert reopened.verify().ok and reopened.verify().leftovers == []
    assert sorted(p.name for p in (tmp_path / "old" / "segments").iterdir() if p.suffix == ".jsonl") == []
    np.testing.assert_array_equal(reopened.vector(4), vectors[4])
    assert [r.item_id for r in reopened.records_for(reopened.live_ids())] == ["0", "1", "3", "4"]


def test_a_damaged_format_1_store_is_refused_naming_the_file(tmp_path):
    write_format1(tmp_path / "old")
    path = tmp_path / "old" / "segments" / "000001.npy"
    path.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(StoreIntegrityError, match=str(path)):
        FeatureStore.open(tmp_path / "old")
    write_format1(tmp_path / "old2")
    (tmp_path / "old2" / "segments" / "000000.jsonl").write_text("not json\n")
    with pytest.raises(StoreIntegrityError, match="000000.jsonl"):
        FeatureStore.open(tmp_path / "old2", verify=False).records_for([0])
