"""Near-duplicates: grouping against a naive all-pairs reference, the chaining guard, exact copies by
content hash, calibration on generated copies of real photos, collapsed searches, new photos checked,
a kill in the middle of a run, and the refusals."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clothsim.cli.main import main
from clothsim.data import read_catalog
from clothsim.duplicates.alterations import KINDS, altered_copies
from clothsim.duplicates.calibration import calibrate
from clothsim.duplicates.finder import find_duplicates
from clothsim.duplicates.grouping import group_pairs
from clothsim.duplicates.neighbours import Pairs
from clothsim.errors import DataError, UsageError
from clothsim.fileio import FAULT_AT_ENV, FAULT_MATCH_ENV
from clothsim.images import load_image
from clothsim.similarity_index import SimilarityIndex

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "clothsim" / "assets" / "clothing_sample"
pytestmark = pytest.mark.real_photos


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def naive_groups(vectors: np.ndarray, threshold: float) -> set[frozenset[int]]:
    """All pairs scored, best first; two groups merge only if every cross pair reaches the threshold."""
    n = len(vectors)
    sims = vectors.astype(np.float64) @ vectors.T.astype(np.float64)
    pairs = sorted(((sims[i, j], i, j) for i in range(n) for j in range(i + 1, n) if sims[i, j] >= threshold),
                   key=lambda p: (-p[0], p[1], p[2]))
    group = {i: {i} for i in range(n)}
    for _, i, j in pairs:
        if group[i] is group[j]:
            continue
        if min(sims[a, b] for a in group[i] for b in group[j]) < threshold:
            continue
        merged = group[i] | group[j]
        for member in merged:
            group[member] = merged
    return {frozenset(g) for g in {id(g): g for g in group.values()}.values() if len(g) > 1}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouping_matches_the_naive_all_pairs_reference(seed):
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(12, 16)))
    vectors = unit(np.concatenate([centres[rng.integers(0, 12, 90)] + 0.12 * rng.normal(size=(90, 16)),
                                   rng.normal(size=(40, 16))]))
    threshold = 0.9
    sims = vectors @ vectors.T
    a, b = np.nonzero(np.triu(sims >= threshold, 1))
    pairs = Pairs(a.astype(np.int64), b.astype(np.int64), sims[a, b].astype(np.float32))
    order = np.lexsort((pairs.b, pairs.a, -pairs.score))
    pairs = Pairs(pairs.a[order], pairs.b[order], pairs.score[order])
    found = group_pairs(pairs, lambda ids: vectors[ids], threshold)
    assert {frozenset(g.members) for g in found.groups} == naive_groups(vectors, threshold)
    for group in found.groups:  # every two members are alike, and the scores are to the representative
        block = vectors[group.members] @ vectors[group.members].T
        assert block.min() >= threshold - 1e-6
        np.testing.assert_allclose(group.scores, np.minimum(1, block[0]), atol=1e-6)


def test_the_chaining_guard_keeps_unlike_ends_apart():
    # A front view ~ a three-quarter view ~ a back view: neighbours pairwise, but the ends are not alike.
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([np.cos(0.35), np.sin(0.35), 0.0])
    c = np.array([np.cos(0.7), np.sin(0.7), 0.0])
    vectors = unit(np.stack([a, b, c]))
    sims = vectors @ vectors.T
    assert sims[0, 1] > 0.93 and sims[1, 2] > 0.93 and sims[0, 2] < 0.8
    pairs = Pairs(np.array([0, 1]), np.array([1, 2]), np.array([sims[0, 1], sims[1, 2]], dtype=np.float32))
    found = group_pairs(pairs, lambda ids: vectors[ids], 0.93)
    assert [sorted(g.members) for g in found.groups] == [[0, 1]] and found.refused_merges == 1


@pytest.fixture(scope="module")
def planted(tmp_path_factory, clothing_dataset):
    """Real photos at their full size with planted copies: 4 originals with one altered copy of each kind,
    2 byte-identical files, and 40 other photos; indexed."""
    root = tmp_path_factory.mktemp("planted")
    shop = root / "shop"
    shop.mkdir()
    photos = sorted(clothing_dataset.glob("train/*/*.jpg"))
    random.Random(3).shuffle(photos)
    originals = photos[:4]
    for photo in photos[:46]:
        shutil.copy(photo, shop / photo.name)
    for number, photo in enumerate(originals):
        for kind, copy in altered_copies(load_image(photo), number).items():
            copy.save(shop / f"copy-{number}-{kind}.jpg", quality=95)
    for photo in photos[4:6]:
        shutil.copy(photo, shop / f"same-{photo.name}")
    index, _ = SimilarityIndex.build(read_catalog(shop), root / "idx", progress=False)
    return {"shop": shop, "index_dir": root / "idx", "originals": [o.name for o in originals],
            "identical": [p.name for p in photos[4:6]]}


def _names(report, group) -> set[str]:
    return {Path(report.paths[i]).name for i in group.members}


def test_planted_copies_and_identical_files_are_grouped(planted):
    index = SimilarityIndex.open(planted["index_dir"])
    report = find_duplicates(index, threshold=0.85, progress=False, save=False)
    groups = [_names(report, g) for g in report.groups]
    for number, original in enumerate(planted["originals"]):
        expected = {original} | {f"copy-{number}-{kind}.jpg" for kind in KINDS}
        assert any(expected <= g for g in groups), (original, groups)
    for name in planted["identical"]:
        [group] = [g for g in report.groups if name in _names(report, g)]
        assert _names(report, group) == {name, f"same-{name}"} and group.exact
    assert report.exact_copies == 4
    assert json.loads(json.dumps(report.to_json()))["groups"][0]["representative"] in report.groups[0].members


def test_calibration_on_generated_copies_recommends_and_records_a_threshold(planted, tmp_path):
    index_dir = tmp_path / "idx"
    shutil.copytree(planted["index_dir"], index_dir)
    index = SimilarityIndex.open(index_dir)
    result = calibrate(index, sample=20, seed=1, progress=False)
    assert result.n_originals == 20 and result.n_copies == 20 * len(KINDS)
    chosen = result.row(result.recommended)
    assert chosen.precision >= 0.98 and chosen.recall >= 0.9, chosen
    recalls = [r.recall for r in result.rows]
    assert recalls == sorted(recalls, reverse=True)  # a higher threshold never finds more
    assert main(["-q", "duplicates", "--index", str(index_dir), "--calibrate", "--sample", "20", "--seed", "1"]) == 0
    record = json.loads((index_dir / "manifest.json").read_text())["duplicates"]
    assert record["threshold"] == result.recommended and record["calibration"]["copies"] == result.n_copies


def test_cli_json_and_report_folder_and_collapsed_search(planted, tmp_path, capsys):
    index_dir = tmp_path / "idx"
    shutil.copytree(planted["index_dir"], index_dir)
    out = tmp_path / "report"
    assert main(["-q", "duplicates", "--index", str(index_dir), "--threshold", "0.85", "--json",
                 "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["groups"] and set(printed["groups"][0]) >= {"members", "representative"}
    assert set(printed["groups"][0]["members"][0]) >= {"id", "path", "score"}
    rows = (out / "groups.csv").read_text().splitlines()
    assert rows[0].startswith("group,size,representative,id,path,score")
    assert len(rows) - 1 == sum(len(g["members"]) for g in printed["groups"])
    assert "Near-duplicates" in (out / "index.html").read_text() and any((out / "thumbs").iterdir())

    # A search for an original: plain, its copies fill the list; collapsed, they count once.
    query = next(p for p in (planted["shop"]).iterdir() if p.name == planted["originals"][0])
    index = SimilarityIndex.open(index_dir)
    plain = index.search(str(query), k=5)
    assert sum(Path(h.record.path).name.startswith("copy-0-") for h in plain) >= 4
    collapsed = index.search(str(query), k=5, collapse=True)
    assert len(collapsed) == 5 and collapsed[0].group_size == 1 + len(KINDS)
    assert not any(Path(h.record.path).name.startswith("copy-0-") for h in collapsed[1:])
    assert [h.rank for h in collapsed] == [1, 2, 3, 4, 5]
    assert main(["search", str(query), "--index", str(index_dir), "--collapse", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)[0]["results"]
    assert hits[0]["group_size"] == 1 + len(KINDS) and len(hits) == 5


def test_a_collapsed_search_needs_no_earlier_duplicate_run(planted):
    index = SimilarityIndex.open(planted["index_dir"])
    query = next(p for p in planted["shop"].iterdir() if p.name == planted["originals"][1])
    hits = index.search(str(query), k=4, collapse=True)  # copies merged by the threshold alone
    assert hits[0].group_size >= 4 and len({h.id for h in hits}) == 4


def test_new_photos_are_checked_and_a_sync_reports_the_copies_it_added(planted, tmp_path, capsys):
    shop = tmp_path / "shop"
    shutil.copytree(planted["shop"], shop)
    index_dir = tmp_path / "idx"
    assert main(["-q", "index", str(shop), "--out", str(index_dir)]) == 0
    capsys.readouterr()
    photo = shop / planted["identical"][0]
    assert main(["duplicates", "--index", str(index_dir), str(photo)]) == 0
    out = capsys.readouterr().out
    assert "near-duplicate(s) in the index" in out and f"same-{photo.name}" in out
    fresh = sorted(SAMPLE.glob("test/*/*.jpg"))[0]
    assert main(["duplicates", "--index", str(index_dir), str(fresh)]) == 0
    assert "no near-duplicate in the index" in capsys.readouterr().out
    # The shop uploads a resized copy of a catalogue photo: the sync says so.
    altered_copies(load_image(photo), 9)["resize"].save(shop / "upload-again.jpg", quality=95)
    assert main(["index", str(shop), "--out", str(index_dir)]) == 0
    out = capsys.readouterr().out
    assert "+1 added" in out and "near-duplicates of indexed items" in out and "upload-again.jpg" in out


def test_refusals(planted, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["duplicates", "--index", str(planted["index_dir"]), "--threshold", "1.5"])
    assert "(0, 1]" in capsys.readouterr().err
    index = SimilarityIndex.open(planted["index_dir"])
    with pytest.raises(UsageError, match=r"\(0, 1\]"):
        find_duplicates(index, threshold=0, save=False, progress=False)
    empty_dir = tmp_path / "empty"
    shutil.copytree(planted["index_dir"], empty_dir)
    emptied = SimilarityIndex.open(empty_dir)
    emptied.delete(emptied.store.live_ids().tolist())
    with pytest.raises(DataError, match="no vectors"):
        find_duplicates(SimilarityIndex.open(empty_dir), progress=False)


def test_a_backend_without_neighbours_by_id_falls_back_to_the_exact_scan(planted, caplog):
    index = SimilarityIndex.open(planted["index_dir"])

    class SearchOnly:
        """A third party's backend: search and nothing more."""

        name = "search-only"

        def __init__(self, inner):
            self.inner = inner

        def search(self, *args, **kwargs):
            return self.inner.search(*args, **kwargs)

    index.backend = SearchOnly(index.backend)
    report = find_duplicates(index, threshold=0.85, progress=False, save=False)
    assert "cannot return neighbours by id" in report.note and "exact scan" in report.note
    assert "cannot return neighbours by id" in caplog.text
    assert len(report.groups) >= 6


def test_a_kill_during_the_run_leaves_no_partial_output_and_the_rerun_resumes(planted, tmp_path):
    index_dir = tmp_path / "idx"
    shutil.copytree(planted["index_dir"], index_dir)
    manifest = (index_dir / "manifest.json").read_bytes()
    out = tmp_path / "report"
    # Blocks of 32 items, so the 66 items take three blocks of neighbour pairs.
    script = ("import sys\nimport clothsim.duplicates.neighbours as neighbours\nneighbours.BLOCK_ROWS = 32\n"
              "from clothsim.cli.main import main\nsys.exit(main(sys.argv[1:]))\n")
    argv = [sys.executable, "-c", script, "-q", "duplicates", "--index", str(index_dir), "--threshold", "0.85",
            "--out", str(out)]
    # Stopped at the second block's write.
    env = dict(os.environ, **{FAULT_AT_ENV: "2", FAULT_MATCH_ENV: "write block-"})
    killed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not out.exists() and (index_dir / "manifest.json").read_bytes() == manifest
    assert not (index_dir / "duplicates").exists()
    blocks = list((index_dir / "duplicates-work").rglob("block-*.npy"))
    assert len(blocks) == 1  # the first block was kept for the rerun
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out / "groups.csv").is_file() and not (index_dir / "duplicates-work").exists()
    assert json.loads((index_dir / "manifest.json").read_text())["duplicates"]["groups"] >= 6


@pytest.mark.parametrize("backend", ["faiss-hnsw", "milvus"])
def test_an_approximate_backend_groups_as_the_exact_scan_does(planted, tmp_path, backend):
    """The backend proposes the pairs through its own neighbour search; they are scored again from the
    store, so the groups are the exact scan's."""
    pytest.importorskip("faiss" if backend.startswith("faiss") else "pymilvus")
    from clothsim.features.store import FeatureStore
    from clothsim.index.base import NeighbourSearch
    from clothsim.index.registry import build_index

    index_dir = tmp_path / "idx"
    shutil.copytree(planted["index_dir"], index_dir)
    build_index(FeatureStore.open(index_dir), backend)
    index = SimilarityIndex.open(index_dir)
    assert index.backend.name == backend and isinstance(index.backend, NeighbourSearch)
    approximate = find_duplicates(index, threshold=0.85, progress=False, save=False)
    exact = find_duplicates(SimilarityIndex.open(planted["index_dir"]), threshold=0.85, progress=False, save=False)
    assert "cannot return neighbours by id" not in approximate.note
    assert {frozenset(g.members) for g in approximate.groups} == {frozenset(g.members) for g in exact.groups}
    np.testing.assert_allclose(sorted(s for g in approximate.groups for s in g.scores),
                               sorted(s for g in exact.groups for s in g.scores), atol=1e-5)


def test_the_server_collapses_copies_and_checks_an_upload_for_them(planted):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from clothsim.web.app import create_app

    index = SimilarityIndex.open(planted["index_dir"])
    original = planted["shop"] / planted["originals"][0]
    with TestClient(create_app(index)) as client:
        def search(**fields):
            answer = client.post("/api/search", files={"image": ("q.jpg", original.read_bytes(), "image/jpeg")},
                                 data={"k": "5", **fields})
            assert answer.status_code == 200, answer.text
            return answer.json()

        plain, collapsed = search(), search(collapse="true")
        assert not plain["collapse"] and collapsed["collapse"]
        assert sum(h["name"].startswith("copy-0-") for h in plain["results"]) >= 4
        assert all(h["group_size"] is None for h in plain["results"])
        # The same answer as the Python API's collapsed search, its group sizes included.
        expected = index.search(str(original), k=5, collapse=True)
        assert [(h["id"], h["group_size"]) for h in collapsed["results"]] == [(h.id, h.group_size) for h in expected]
        assert collapsed["results"][0]["group_size"] == 1 + len(KINDS)
        by_id = client.post("/api/search", data={"id": str(expected[0].id), "k": "3", "collapse": "true"}).json()
        assert [h["id"] for h in by_id["results"]] == [h.id for h in index.search_by_id(expected[0].id, 3,
                                                                                          collapse=True)]

        # An upload checked for copies: a resized copy of a catalogue photo finds it; a new photo finds none.
        photo = planted["shop"] / planted["identical"][0]
        copy = photo.parent.parent / "resized.jpg"
        altered_copies(load_image(photo), 5)["resize"].save(copy, quality=90)
        found = client.post("/api/duplicates", files={"image": ("c.jpg", copy.read_bytes(), "image/jpeg")}).json()
        names = {h["name"] for h in found["copies"]}
        assert {photo.name, f"same-{photo.name}"} <= names and found["threshold"] == pytest.approx(0.90)
        assert all(h["score"] >= found["threshold"] for h in found["copies"])
        fresh = sorted(SAMPLE.glob("test/*/*.jpg"))[0]
        none = client.post("/api/duplicates", files={"image": ("n.jpg", fresh.read_bytes(), "image/jpeg")}).json()
        assert none["copies"] == []
        refused = client.post("/api/duplicates", files={"image": ("x.jpg", b"not a photo", "image/jpeg")})
        assert refused.status_code == 415
