from __future__ import annotations

import numpy as np
import pytest

from clothsim.data.records import CatalogRecord
from clothsim.encoders.base import l2_normalize
from clothsim.errors import StaleStoreError
from clothsim.features.store import FeatureStore

FP = {"encoder": "e", "weights": "w1", "dim": 4, "preprocessing": None}


def _records(n, start=0):
    return [CatalogRecord(f"img{start + i}.jpg", "ab"[i % 2], item_id=str(i), attributes=("x",)) for i in range(n)]


def _vectors(n, seed=0):
    return l2_normalize(np.random.default_rng(seed).normal(size=(n, 4)))


def test_append_then_reopen_round_trips_vectors_and_metadata(tmp_path):
    store = FeatureStore.create(tmp_path / "s", FP)
    vecs = _vectors(5)
    ids = store.append(vecs, _records(5))
    assert ids.tolist() == [0, 1, 2, 3, 4]
    again = FeatureStore.open(tmp_path / "s", expect=FP)
    loaded, items = again.load_vectors()
    np.testing.assert_allclose(loaded, vecs, rtol=1e-6)
    assert [it.record for it in items] == _records(5)
    assert again.get(3).record.item_id == "3"


def test_float16_store_keeps_vectors_close(tmp_path):
    store = FeatureStore.create(tmp_path / "s", FP, dtype="float16")
    vecs = _vectors(7)
    store.append(vecs, _records(7))
    loaded, _ = FeatureStore.open(tmp_path / "s").load_vectors()
    assert loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, vecs, atol=1e-3)
    assert np.load(tmp_path / "s" / "segments" / "000000.npy").dtype == np.float16


@pytest.mark.parametrize("field, value", [("encoder", "other"), ("weights", "w2"), ("dim", 8),
                                          ("preprocessing", {"input_size": 299})])
def test_stale_store_is_refused_naming_the_field(tmp_path, field, value):
    FeatureStore.create(tmp_path / "s", FP)
    with pytest.raises(StaleStoreError, match=field):
        FeatureStore.open(tmp_path / "s", expect={**FP, field: value})


def test_delete_and_add_without_rebuild(tmp_path):
    store = FeatureStore.create(tmp_path / "s", FP)
    store.append(_vectors(4), _records(4))
    assert store.delete([1, 1, 2]) == 2
    assert store.delete([1]) == 0
    new_ids = store.append(_vectors(2, seed=1), _records(2, start=10))
    assert new_ids.tolist() == [4, 5]  # ids are never reused
    reopened = FeatureStore.open(tmp_path / "s")
    assert len(reopened) == 4
    assert reopened.live_ids().tolist() == [0, 3, 4, 5]
    with pytest.raises(KeyError):
        reopened.get(1)
    with pytest.raises(KeyError, match="unknown ids"):
        reopened.delete([99])


def test_iter_blocks_respects_chunks_deletions_and_masks(tmp_path):
    store = FeatureStore.create(tmp_path / "s", FP)
    store.append(_vectors(5), _records(5))
    store.append(_vectors(3, seed=2), _records(3, start=5))
    store.delete([2])
    mask = np.array([True] * 7 + [False])
    seen = np.concatenate([ids for ids, _ in store.iter_blocks(chunk_rows=2, row_mask=mask)])
    assert seen.tolist() == [0, 1, 3, 4, 5, 6]
    assert max(len(b) for _, b in store.iter_blocks(chunk_rows=2)) == 2


def test_append_checks_shapes_and_normalisation(tmp_path):
    store = FeatureStore.create(tmp_path / "s", FP)
    with pytest.raises(ValueError, match="shape"):
        store.append(np.ones((2, 3)), _records(2))
    with pytest.raises(ValueError, match="records"):
        store.append(_vectors(2), _records(3))
    with pytest.raises(ValueError, match="normalised"):
        store.append(np.ones((2, 4)), _records(2))


def test_open_missing_store_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        FeatureStore.open(tmp_path)


def test_create_refuses_existing_store(tmp_path):
    FeatureStore.create(tmp_path / "s", FP)
    with pytest.raises(FileExistsError):
        FeatureStore.create(tmp_path / "s", FP)


def test_written_files_get_the_ordinary_umask_mode(tmp_path):
    import os

    from clothsim.fileio import write_json

    write_json(tmp_path / "a.json", {"x": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_reader_reads_checks_and_verifies_without_any_writer_part(tmp_path):
    from clothsim.features.store import StoreReader

    store = FeatureStore.create(tmp_path / "s", FP)
    vecs = _vectors(6)
    store.append(vecs, _records(6))
    store.delete([2])
    reader = StoreReader.open(tmp_path / "s", expect=FP, verify=True)
    assert type(reader) is StoreReader and not hasattr(reader, "append") and not hasattr(reader, "transaction")
    assert reader.live_ids().tolist() == [0, 1, 3, 4, 5]
    np.testing.assert_allclose(reader.vectors_for([5, 0]), vecs[[5, 0]], rtol=1e-6)
    assert reader.get(3).record == _records(6)[3]
    reader.check_rows([0, 5])
    report = reader.verify_in_background().wait(30)
    assert report is not None and report.ok and report.live == 5
