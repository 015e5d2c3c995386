"""A store too big to hash at every open (over 64 MiB) never serves a damaged row either.

The store here is real and over :data:`AUTO_VERIFY_BYTES` (13,200 x 1280 float32 vectors, 68 MB), so
opening it checks sizes and headers only; what keeps damage from being served is the check of every
hit against its row checksum, the scan's refusal of rows no unit vector can be (zeros included),
Parquet's page checksums and the background full check. Also: a format-2 store (no row checksums)
still opens, checks a hit's whole segment, and is converted by its first write.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from clothsim.data.records import CatalogRecord
from clothsim.features import store as store_module
from clothsim.features.store import AUTO_VERIFY_BYTES, FeatureStore, StoreIntegrityError
from clothsim.index import build_index, open_index
from clothsim.index.exact import ExactIndex

DIM = 1280
ROWS = 13_200
DRESS, SHOES = 10, 20  # rows of segment 0 used by the damage


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("large") / "store"
    rng = np.random.default_rng(0)
    store = FeatureStore.create(root, {"encoder": "big", "weights": "none", "dim": DIM, "preprocessing": None})
    for lo, hi in ((0, 8000), (8000, ROWS)):
        x = rng.normal(size=(hi - lo, DIM)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        store.append(x, [CatalogRecord(f"/photos/{i}.jpg", "dress" if i % 2 == 0 else "shoes") for i in range(lo, hi)])
    assert store._data_bytes() > AUTO_VERIFY_BYTES
    return root


@pytest.fixture()
def root(pristine, tmp_path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(pristine, copy)
    return copy


def _rows(root: Path, change) -> tuple[Path, np.ndarray]:
    """Apply ``change`` to segment 0's vectors in place (the file keeps its size); returns it and the
    vectors as they were."""
    path = FeatureStore.open(root, verify=False).segments[0].vectors_path
    array = np.load(path, mmap_mode="r+")
    before = np.array(array)
    change(array)
    array.flush()
    del array
    return path, before


def _swap(a):
    a[[DRESS, SHOES]] = a[[SHOES, DRESS]]


def _zero(a):
    a[DRESS] = 0


@pytest.mark.parametrize("damage", ["swapped rows", "zeroed row"])
def test_exact_search_never_serves_a_damaged_row(root, damage):
    path, before = _rows(root, _swap if damage == "swapped rows" else _zero)
    store = FeatureStore.open(root)  # over 64 MiB: opening hashes nothing, and does not notice
    query = before[DRESS][None, :]  # the dress photo itself
    with pytest.raises(StoreIntegrityError, match=rf"{path}: row {DRESS if damage == 'zeroed row' else SHOES} "
                                                  r"\(item \d+\) does not match its checksum"):
        ExactIndex(store).search(query, k=3)
    with pytest.raises(StoreIntegrityError, match="does not match its checksum"):
        ExactIndex(store).search(query, k=3, category="dress")  # filtered: a gathered scan, same guard


@pytest.fixture(scope="module")
def with_graph(pristine, tmp_path_factory) -> Path:
    pytest.importorskip("faiss")
    root = tmp_path_factory.mktemp("large-graph") / "store"
    shutil.copytree(pristine, root)
    build_index(FeatureStore.open(root), "faiss-hnsw", M=8, efConstruction=40, category_graphs=False)
    return root


@pytest.mark.parametrize("damage", ["swapped rows", "zeroed row"])
def test_a_graph_over_a_large_store_never_serves_a_damaged_row(with_graph, tmp_path, damage):
    root = tmp_path / "store"
    shutil.copytree(with_graph, root)
    path, before = _rows(root, _swap if damage == "swapped rows" else _zero)
    index = open_index(FeatureStore.open(root))
    with pytest.raises(StoreIntegrityError, match=rf"{path}: row \d+ \(item \d+\) does not match its checksum"):
        index.search(before[DRESS][None, :], k=3)


def test_damaged_metadata_pages_are_refused_when_read(root):
    path = FeatureStore.open(root, verify=False).segments[0].metadata_path
    data = bytearray(path.read_bytes())
    at = len(data) // 8
    data[at:at + 64] = np.random.default_rng(5).bytes(64)
    path.write_bytes(bytes(data))
    store = FeatureStore.open(root)
    with pytest.raises(StoreIntegrityError, match=str(path)):
        ExactIndex(store).search(store.vector(0)[None, :], k=3)


def test_damaged_tombstones_are_refused_at_any_size(root):
    store = FeatureStore.open(root)
    store.delete([1, 2, 3])
    tomb = FeatureStore.open(root)._tombstone_path()
    data = bytearray(tomb.read_bytes())
    data[-8:] = (5).to_bytes(8, "little")  # id 3 becomes id 5: a deleted item would be served again
    tomb.write_bytes(bytes(data))
    with pytest.raises(StoreIntegrityError, match=rf"{tomb}: does not match its checksum"):
        FeatureStore.open(root)


def test_the_background_check_stops_serving_once_it_finds_damage(root):
    path, before = _rows(root, lambda a: a.__setitem__(ROWS - 9000, a[ROWS - 9000] * 0.5))  # a row no search hits
    store = FeatureStore.open(root)
    index = ExactIndex(store)
    query = before[0][None, :]
    assert index.search(query, k=1)[0][0].id == 0  # served: the damaged row is not among the hits
    check = store.verify_in_background()
    report = check.wait(120)
    assert check.done and report is not None and not report.ok
    with pytest.raises(StoreIntegrityError, match=rf"{path}: does not match its checksum"):
        index.search(query, k=1)


def _as_format_2(root: Path) -> None:
    """Rewrite the store as format 2 wrote it: no row checksums."""
    manifest = json.loads((root / "manifest.json").read_text())
    for seg in manifest["segments"]:
        del seg["rowsums"]
        (root / "segments" / f"{seg['name']}.rowsums.npy").unlink()
    manifest["format_version"] = 2
    manifest.pop("manifest_sha256")
    manifest["manifest_sha256"] = hashlib.sha256(store_module._canonical(manifest)).hexdigest()
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_a_format_2_store_checks_a_hits_whole_segment_and_is_converted_by_its_first_write(root, tmp_path):
    _as_format_2(root)
    intact = tmp_path / "intact"
    shutil.copytree(root, intact)
    path, before = _rows(root, _swap)
    store = FeatureStore.open(root)
    assert store.format_version == 2
    with pytest.raises(StoreIntegrityError, match=rf"{path}: does not match its checksum"):
        ExactIndex(store).search(before[DRESS][None, :], k=3)

    old = FeatureStore.open(intact)
    assert ExactIndex(old).search(old.vector(7)[None, :], k=1)[0][0].id == 7  # served once checked
    old.delete([4])  # the first write adds the row checksums, in the same commit
    upgraded = FeatureStore.open(intact)
    assert upgraded.format_version == 3 and upgraded.manifest["upgraded_from"] == 2
    assert all("rowsums" in seg for seg in upgraded.manifest["segments"])
    assert upgraded.verify().ok and upgraded.verify().leftovers == []
    assert upgraded.deleted_ids.tolist() == [4]


def test_a_damaged_format_2_store_is_not_given_row_checksums(root):
    _as_format_2(root)
    _rows(root, _swap)
    with pytest.raises(StoreIntegrityError, match="does not match its checksum"):
        FeatureStore.open(root).delete([4])
    assert json.loads((root / "manifest.json").read_text())["format_version"] == 2  # nothing committed
