"""Property-based tests: whatever the bytes, a reader gives a result or one of its documented errors.

The CSV and DeepFashion readers and opening a store's manifest are fed generated input (random text
built from the formats' own tokens, random bytes, and valid files with one piece replaced). Anything but
a result or a documented error (a KeyError, IndexError, TypeError, UnicodeDecodeError, ...) fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clothsim.data.csv_catalog import read_csv_catalog
from clothsim.data.deepfashion import read_deepfashion_category, read_deepfashion_inshop
from clothsim.data.records import CatalogRecord
from clothsim.encoders.base import l2_normalize
from clothsim.errors import AnnotationFormatError, DataError, EmptyCatalogError, StaleStoreError
from clothsim.features.store import FeatureStore, StoreIntegrityError, UnfinishedStoreError, _canonical

# FUZZ_EXAMPLES=3000 for a longer hunt (passes here); no example database, nothing written to the repository.
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 150)), deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
READER_ERRORS = (AnnotationFormatError, EmptyCatalogError, DataError, FileNotFoundError)
STORE_ERRORS = (StoreIntegrityError, StaleStoreError, UnfinishedStoreError, FileNotFoundError)

# Text made of what the formats are made of, so generated files get past the first checks often.
TOKENS = st.sampled_from(["img/a.jpg", "img/b c.jpg", "1", "-1", "0", "2", "07", "x", "train", "val", "test",
                          "query", "gallery", "id_00000001", "MEN", "WOMEN", "Denim", "  ", "\t", ",", ";", "|", '"',
                          "path", "category", "split", "bbox", "item_id", "attributes", "é", "\x00", "3 4 5 6",
                          "image_name", "category_name", "attribute_name", "999999999999999999999"])
LINES = st.lists(st.lists(TOKENS, max_size=8).map(" ".join), max_size=8).map("\n".join)
TEXT = st.one_of(LINES, st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1")))


@pytest.fixture(scope="module")
def scratch():
    path = Path(tempfile.mkdtemp(prefix="clothsim-fuzz-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ----- CSV ---------------------------------------------------------------------------------------------

def _records_or_documented_error(read, source):
    """``read(source)``, or ``None`` when it refused the input with one of the documented errors."""
    try:
        return read(source)
    except READER_ERRORS:
        return None

@FUZZ
@given(header=st.sampled_from(["path,category", "path,category,split,bbox", "path,category,item_id,attributes",
                               "category", ""]), body=TEXT, raw=st.one_of(st.none(), st.binary(max_size=100)))
def test_csv_reader_gives_records_or_a_documented_error(scratch, header, body, raw):
    path = scratch / "catalogue.csv"
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text(f"{header}\n{body.replace(' ', ',')}", encoding="utf-8", errors="surrogatepass")
    records = _records_or_documented_error(read_csv_catalog, path)
    if records is None:
        return
    assert records and all(isinstance(r, CatalogRecord) and r.category for r in records)


# ----- DeepFashion ------------------------------------------------------------------------------------------
def _write_list(path: Path, header: str, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([str(len(rows)), header, *rows]) + "\n", encoding="utf-8")


def _category_root(root: Path) -> dict[str, Path]:
    anno = root / "Anno"
    files = {
        "categories": anno / "list_category_cloth.txt", "labels": anno / "list_category_img.txt",
        "attributes": anno / "list_attr_cloth.txt", "image_attributes": anno / "list_attr_img.txt",
        "boxes": anno / "list_bbox.txt", "partition": root / "Eval" / "list_eval_partition.txt",
    }
    _write_list(files["categories"], "category_name  category_type", ["Blouse  1", "Jeans   2"])
    _write_list(files["labels"], "image_name  category_label", ["img/a.jpg 1", "img/b.jpg 2"])
    _write_list(files["attributes"], "attribute_name  attribute_type", ["floral 1", "denim 2"])
    _write_list(files["image_attributes"], "image_name  attribute_labels", ["img/a.jpg 1 -1", "img/b.jpg -1 1"])
    _write_list(files["boxes"], "image_name  x_1  y_1  x_2  y_2", ["img/a.jpg 1 2 30 40", "img/b.jpg 0 0 9 9"])
    _write_list(files["partition"], "image_name  evaluation_status", ["img/a.jpg train", "img/b.jpg test"])
    (root / "Img" / "img").mkdir(parents=True, exist_ok=True)
    return files


@FUZZ
@given(which=st.sampled_from(["categories", "labels", "attributes", "image_attributes", "boxes", "partition"]),
       content=TEXT, raw=st.one_of(st.none(), st.binary(max_size=100)))
def test_deepfashion_category_reader_gives_records_or_a_documented_error(scratch, which, content, raw):
    root = scratch / "category"
    shutil.rmtree(root, ignore_errors=True)
    files = _category_root(root)
    if raw is not None:
        files[which].write_bytes(raw)
    else:
        files[which].write_text(content, encoding="utf-8", errors="surrogatepass")
    records = _records_or_documented_error(read_deepfashion_category, root)
    if records is None:
        return
    assert all(isinstance(r, CatalogRecord) for r in records)


@FUZZ
@given(which=st.sampled_from(["partition", "boxes"]), content=TEXT)
def test_deepfashion_inshop_reader_gives_records_or_a_documented_error(scratch, which, content):
    root = scratch / "inshop"
    shutil.rmtree(root, ignore_errors=True)
    files = {"partition": root / "Eval" / "list_eval_partition.txt", "boxes": root / "Anno" / "list_bbox_inshop.txt"}
    _write_list(files["partition"], "image_name item_id evaluation_status",
                ["img/MEN/Denim/id_00000080/01_1_front.jpg id_00000080 train",
                 "img/WOMEN/Denim/id_00000002/02_1_front.jpg id_00000002 query"])
    _write_list(files["boxes"], "image_name  clothes_type  pose_type  x_1  y_1  x_2  y_2",
                ["img/MEN/Denim/id_00000080/01_1_front.jpg  1  1  050  049  208  235"])
    (root / "Img" / "img").mkdir(parents=True, exist_ok=True)
    files[which].write_text(content, encoding="utf-8", errors="surrogatepass")
    records = _records_or_documented_error(read_deepfashion_inshop, root)
    if records is None:
        return
    assert all(isinstance(r, CatalogRecord) for r in records)


# ----- opening a manifest ------------------------------------------------------------------------------------
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2, 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
FIELDS = ["format_version", "fingerprint", "dtype", "segments", "next_id", "next_file", "tombstones", "failures",
          "sync", "manifest_sha256"]


@pytest.fixture(scope="module")
def valid_store(scratch) -> Path:
    root = scratch / "valid"
    store = FeatureStore.create(root, {"encoder": "e", "weights": "w", "dim": 4, "preprocessing": None})
    rng = np.random.default_rng(0)
    store.append(l2_normalize(rng.normal(size=(5, 4))), [CatalogRecord(f"{i}.jpg", "ab"[i % 2]) for i in range(5)])
    store.append(l2_normalize(rng.normal(size=(3, 4))), [CatalogRecord(f"x{i}.jpg", "c") for i in range(3)])
    store.delete([1])
    return root


def _exercise(root: Path) -> None:
    """Open the store and use it as a reader would; only documented errors may come out."""
    try:
        store = FeatureStore.open(root)
    except STORE_ERRORS:
        return
    live = store.live_ids()
    assert len(store) == live.size
    store.category_codes()
    store.records_for(live)
    from clothsim.index.exact import ExactIndex

    if live.size:
        ExactIndex(store).search(store.vector(int(live[0]))[None, :], k=3)


def _resign(manifest: dict) -> dict:
    # Re-stamped like a writer would, so the fuzzed content reaches the structural checks.
    manifest = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    manifest["manifest_sha256"] = hashlib.sha256(_canonical(manifest)).hexdigest()
    return manifest


@FUZZ
@given(field=st.sampled_from(FIELDS), value=JSON, resign=st.booleans())
def test_a_manifest_with_any_field_replaced_opens_or_fails_cleanly(scratch, valid_store, field, value, resign):
    root = scratch / "mutated"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(valid_store, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest[field] = value
    if resign and field != "manifest_sha256":
        manifest = _resign(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))
    _exercise(root)


@FUZZ
@given(segment=st.integers(0, 1), key=st.sampled_from(["name", "id_start", "rows", "vectors", "metadata"]),
       value=JSON)
def test_a_manifest_with_a_segment_entry_replaced_opens_or_fails_cleanly(scratch, valid_store, segment, key, value):
    root = scratch / "segment"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(valid_store, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["segments"][segment][key] = value
    (root / "manifest.json").write_text(json.dumps(_resign(manifest)))
    _exercise(root)


@FUZZ
@given(content=st.one_of(st.binary(max_size=300), JSON.map(lambda v: json.dumps(v).encode())))
def test_any_manifest_bytes_open_or_fail_cleanly(scratch, content):
    root = scratch / "garbage"
    (root / "segments").mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_bytes(content)
    _exercise(root)
