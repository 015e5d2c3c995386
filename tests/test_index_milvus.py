"""The milvus backend against exact search, on a real Milvus Lite database that each test starts in its
own tmp_path: recall floor, exact filters and deletes, adds without a rebuild, save/reopen, catching up
with a changed store, a damaged or locked database, a server that is not there, the CLI and serve."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="the milvus extra (pymilvus) is not installed")
pytest.importorskip("milvus_lite", reason="the milvus extra (milvus-lite) is not installed")

import _ann_data as data  # noqa: E402
from _ann_data import ids_of  # noqa: E402
from _serve import index_catalog, ready_client, served_app  # noqa: E402

from clothsim.cli.main import main  # noqa: E402
from clothsim.data.records import CatalogRecord  # noqa: E402
from clothsim.errors import ClothsimError, UsageError  # noqa: E402
from clothsim.features.store import FeatureStore  # noqa: E402
from clothsim.index import build_index, open_index  # noqa: E402
from clothsim.index.ann_state import state_checksum  # noqa: E402
from clothsim.index.base import BackendIndexError  # noqa: E402
from clothsim.index.milvus_backend import category_filter  # noqa: E402
from clothsim.index.registry import check_backends  # noqa: E402

DIM = 32
RECALL_FLOOR = 0.95  # measured 0.99+ on this data with the default HNSW (M=32, efSearch=128)


def test_recall_filters_deletes_and_k(tmp_path, opened):
    store = data.make_store(tmp_path / "s", n=1500, dim=DIM)
    index = build_index(store, "milvus", exact_below=0)  # filters go through Milvus filter expressions
    opened.append(index)
    assert index.local and index.uri == str(tmp_path / "s" / "backends" / "milvus" / "milvus.db")
    assert index.count() == 1500 and len(index) == 1500
    q = data.queries(40, DIM)
    assert data.recall(ids_of(index.search(q, 10)), data.exact_ids(store, q, 10)) >= RECALL_FLOOR

    gone = np.arange(0, 1500, 9)
    assert index.delete(gone) == gone.size
    assert index.count() == 1500 - gone.size  # deleted in Milvus too, not only masked
    live = set(store.live_ids().tolist())
    for category in (None, "dress", ["hat", "shoe"]):
        hits = index.search(q, 10, category=category)
        assert all(len(row) == 10 for row in hits)
        assert all(h.id in live for row in hits for h in row)
        if category is not None:
            wanted = {category} if isinstance(category, str) else set(category)
            assert {h.record.category for row in hits for h in row} <= wanted
        truth = data.exact_ids(store, q, 10, category=category)
        assert data.recall(ids_of(hits), truth) >= RECALL_FLOOR - 0.05
        if category is not None:  # by default a filter this narrow is answered exactly
            assert ids_of(index.search(q, 10, category=category, exact_below=20_000)) == truth
    item = int(store.live_ids()[5])
    row = index.search(store.vector(item)[None, :], 5, exclude_ids=[item])[0]
    assert len(row) == 5 and item not in {h.id for h in row}


def test_odd_category_names_are_quoted_in_filters(tmp_path, opened):
    odd = ('say "cheese"', "back\\slash", "it's", "plain")
    store = data.make_store(tmp_path / "s", n=400, dim=DIM, categories=odd)
    index = build_index(store, "milvus", exact_below=0)
    opened.append(index)
    assert category_filter(['say "cheese"', "back\\slash"]) == 'category in ["back\\\\slash", "say \\"cheese\\""]'
    q = data.queries(5, DIM)
    for name in odd:
        hits = index.search(q, 5, category=name)
        assert all(len(r) == 5 and {h.record.category for h in r} == {name} for r in hits)


def test_categories_with_control_characters_added_later_filter_exactly(tmp_path, opened):
    # A REST add accepts any category text; a newline left raw in a filter literal is a Milvus syntax error.
    store = data.make_store(tmp_path / "s", n=300, dim=DIM)
    index = build_index(store, "milvus", exact_below=0)  # filters go through Milvus filter expressions
    opened.append(index)
    odd = ("new\nline", 'quo"te', "back\\slash", "tab\there", "cr\rhere", "bell\x07\x1f\b\f\v\x7f", "mixed\\\n\"")
    assert "\n" not in category_filter(list(odd)) and "\t" not in category_filter(list(odd))
    rng = np.random.default_rng(3)
    added = {}
    for name in odd:
        vectors = rng.standard_normal((3, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        added[name] = set(index.add(vectors, [CatalogRecord(f"odd/{len(added)}/{i}.jpg", name, split="train")
                                              for i in range(3)]).tolist())
    q = data.queries(4, DIM)
    for name in odd:
        hits = index.search(q, 5, category=name)
        assert all({h.id for h in row} == added[name] for row in hits), name
        assert all(h.record.category == name for row in hits for h in row)
    both = index.search(q, 10, category=[odd[0], odd[1]])
    assert all({h.id for h in row} == added[odd[0]] | added[odd[1]] for row in both)


def test_add_visible_without_rebuild_and_reopen_identical(tmp_path, opened, monkeypatch):
    root = tmp_path / "s"
    index = build_index(data.make_store(root, n=1000, dim=DIM), "milvus")
    physical = index.collection
    from clothsim.index import milvus_backend

    monkeypatch.setattr(milvus_backend.MilvusBackend, "build", lambda *a, **k: pytest.fail("rebuilt"))
    q = data.queries(4, DIM)
    new_ids = index.add(q, [CatalogRecord(f"new/{i}.jpg", "coat", split="train") for i in range(4)])
    assert [row[0].id for row in index.search(q, 3)] == new_ids.tolist()  # visible at once
    index.save()
    before = index.search(q, 10)
    index.close()
    reopened = open_index(FeatureStore.open(root))
    opened.append(reopened)
    assert reopened.collection == physical and reopened.count() == 1004
    after = reopened.search(q, 10)
    assert ids_of(after) == ids_of(before)
    np.testing.assert_allclose([[h.score for h in r] for r in after], [[h.score for h in r] for r in before],
                               rtol=1e-5)


def test_catches_up_with_a_store_changed_elsewhere(tmp_path, opened, caplog):
    root = tmp_path / "s"
    build_index(data.make_store(root, n=800, dim=DIM), "milvus").close()
    other = FeatureStore.open(root)  # what an incremental `clothsim index` sync does to the store
    q = data.queries(3, DIM)
    other.append(q, [CatalogRecord(f"sync/{i}.jpg", "hat") for i in range(3)])
    other.delete([10, 11])
    caplog.set_level("WARNING")
    index = open_index(FeatureStore.open(root))
    opened.append(index)
    assert "covers the store only up to id 800" in caplog.text
    assert index.count() == 801
    index.save()
    assert [row[0].id for row in index.search(q, 2)] == [800, 801, 802]

    # A repair that resets the tombstones brings the items back: the collection follows.
    FeatureStore.open(root).reset_tombstones()
    index.close()
    again = open_index(FeatureStore.open(root))
    opened.append(again)
    assert again.count() == 803
    fresh = FeatureStore.open(root)
    assert [row[0].id for row in again.search(np.stack([fresh.vector(10), fresh.vector(11)]), 1)] == [10, 11]


def test_damaged_or_missing_database_is_refused(tmp_path):
    root = tmp_path / "s"
    build_index(data.make_store(root, n=500, dim=DIM), "milvus").close()
    db = root / "backends" / "milvus" / "milvus.db"
    parquet = sorted(db.rglob("data/*.parquet"))
    assert parquet, "Milvus Lite keeps its rows in Parquet files"
    saved = {p: p.read_bytes() for p in parquet}
    for path in parquet:
        path.write_bytes(saved[path][: len(saved[path]) // 3])  # truncated
    with pytest.raises(BackendIndexError, match=rf"{db}.*--backend milvus`"):
        open_index(FeatureStore.open(root))
    for path in parquet:
        path.unlink()  # rows gone: a file the save recorded is missing
    with pytest.raises(BackendIndexError, match=rf"{parquet[0]} is missing.*--backend milvus`"):
        open_index(FeatureStore.open(root))
    [check] = check_backends(FeatureStore.open(root))  # what `clothsim verify` reports
    assert check.name == "milvus" and check.checked and f"{parquet[0]} is missing" in check.problems[0]
    # --quick checks the recorded files' sizes without starting Milvus.
    assert "is missing" in check_backends(FeatureStore.open(root), full=False)[0].problems[0]
    # A state saved before the files were recorded (nor its own checksum): the row count is what tells.
    state_path = root / "backends" / "milvus" / "state.json"
    recorded = json.loads(state_path.read_text())
    state_path.write_text(json.dumps({k: v for k, v in recorded.items() if k not in ("files", "state_sha256")}))
    with pytest.raises(BackendIndexError, match=rf"{db}.*holds 0 items.*the store 500.*--backend milvus`"):
        open_index(FeatureStore.open(root))
    state_path.write_text(json.dumps(recorded))
    state = root / "backends" / "milvus" / "state.json"
    record = json.loads(state.read_text())
    state.write_text(json.dumps({**record, "format_version": 7}))
    with pytest.raises(BackendIndexError, match="newer clothsim"):
        open_index(FeatureStore.open(root))
    state.write_text(json.dumps(record))
    import shutil

    shutil.rmtree(db)
    with pytest.raises(BackendIndexError, match=rf"{db} is missing.*--backend milvus`"):
        open_index(FeatureStore.open(root))
    assert f"{db} is missing" in check_backends(FeatureStore.open(root), full=False)[0].problems[0]
    # --overwrite (a fresh build) repairs it.
    rebuilt = build_index(FeatureStore.open(root), "milvus")
    assert rebuilt.count() == 500
    rebuilt.close()
    assert check_backends(FeatureStore.open(root))[0].ok
    # A server that cannot be reached is not damage: verify says it could not check.
    good = state.read_text()
    elsewhere = {**json.loads(good), "uri": "http://127.0.0.1:9"}
    state.write_text(json.dumps({**elsewhere, "state_sha256": state_checksum(elsewhere)}))  # as clothsim writes it
    [unreachable] = check_backends(FeatureStore.open(root))
    assert not unreachable.checked and unreachable.ok and "could not reach Milvus" in unreachable.note
    state.write_text(good)


def test_a_database_open_in_another_process_is_named(tmp_path, opened):
    root = tmp_path / "s"
    index = build_index(data.make_store(root, n=200, dim=DIM), "milvus")
    opened.append(index)  # this process holds Milvus Lite's lock on the database
    script = ("import sys\nfrom clothsim.features.store import FeatureStore\nfrom clothsim.index import open_index\n"
              "from clothsim.index.base import BackendIndexError\n"
              f"try:\n    open_index(FeatureStore.open({str(root)!r}))\nexcept BackendIndexError as exc:\n"
              "    print(exc)\n    sys.exit(3)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 3, out.stderr
    assert "open in another process" in out.stdout and "milvus.db" in out.stdout


def test_options_and_a_server_that_is_not_there(tmp_path, opened):
    store = data.make_store(tmp_path / "s", n=300, dim=DIM)
    with pytest.raises(UsageError, match="no token option.*MILVUS_TOKEN"):
        build_index(store, "milvus", token="secret")
    with pytest.raises(UsageError, match="index_type must be one of"):
        build_index(store, "milvus", index_type="DISKANN")
    with pytest.raises(UsageError, match="uri must be"):
        build_index(store, "milvus", uri="ftp://example")
    with pytest.raises(ClothsimError, match=r"could not reach Milvus at http://127.0.0.1:9"):
        build_index(store, "milvus", uri="http://127.0.0.1:9", timeout=2)
    ivf = build_index(store, "milvus", index_type="ivf_flat", nlist=8, collection="shop")
    opened.append(ivf)
    assert ivf.collection.startswith("shop_") and ivf.state["build"]["index_type"] == "IVF_FLAT"
    q = data.queries(10, DIM)
    assert data.recall(ids_of(ivf.search(q, 5, nprobe=8)), data.exact_ids(store, q, 5)) >= RECALL_FLOOR
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["index_options"] == {"index_type": "ivf_flat", "nlist": 8, "collection": "shop"}
    assert "secret" not in (tmp_path / "s" / "backends" / "milvus" / "state.json").read_text()


def test_cli_and_serve_on_milvus(colour_catalog, tmp_path, monkeypatch, capsys):
    out = tmp_path / "idx"
    index_catalog(colour_catalog, out, "--backend", "milvus", "--backend-option", "efSearch=32")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["index_backend"] == "milvus"
    capsys.readouterr()
    query = colour_catalog[0].path
    assert main(["search", query, "--index", str(out), "-k", "3", "--json", "--runtime", "torch"]) == 0
    hits = json.loads(capsys.readouterr().out)[0]["results"]
    assert [h["category"] for h in hits] == ["red"] * 3
    app, TestClient = served_app(out, monkeypatch)
    with ready_client(app, TestClient) as client:
        assert client.get("/health").json()["items"] == 24
        found = client.post("/api/search", data={"id": "3", "k": "4", "category": "blue"}).json()
        assert [h["category"] for h in found["results"]] == ["blue"] * 4
        assert 3 not in [h["id"] for h in found["results"]]
    app.state.service.index.backend.close()
