"""`clothsim evaluate --backend ...`: each backend measured on each encoder's gallery beside exact search
(recall@10 against exact), and every requirement of the run checked before anything is encoded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import _tiny_encoders  # noqa: F401  (registers test-thumb8, test-thumb4, test-unavailable)
import pytest

from clothsim.cli.main import main
from clothsim.data.records import CatalogRecord
from clothsim.errors import DataError, UsageError
from clothsim.evaluation import compare_encoders, write_report
from clothsim.evaluation.backends import split_backend_options

pytest.importorskip("faiss", reason="the faiss extra is not installed")


def _as_split_folders(records: list[CatalogRecord], root: Path) -> Path:
    splits = ["train"] * 4 + ["validation"] * 2 + ["test"] * 2
    for i, r in enumerate(records):
        target = root / splits[i % 8] / r.category / Path(r.path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(r.path, target)
    return root


def _nothing_encoded(out: Path) -> bool:
    stores = out / "stores"
    return not stores.exists() or not any(stores.rglob("manifest.json"))


def test_evaluate_reports_every_backend_against_exact(colour_catalog, tmp_path, capsys):
    pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
    data = _as_split_folders(colour_catalog, tmp_path / "data")
    out = tmp_path / "report"
    argv = ["-q", "evaluate", "--data", str(data), "--encoders", "test-thumb8,test-thumb4", "--out", str(out),
            "--workers", "0", "--tsne-points", "0", "--grid-queries", "2", "--backend", "exact",
            "--backend", "faiss-hnsw", "--backend", "milvus", "--backend-option", "faiss-hnsw:efSearch=16"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "## Index backends" in printed  # the CLI prints the table, not only the report file
    assert "| encoder | backend | options | P@1 | P@5 | P@10 | mAP@10 | recall@10 vs exact | build s | ms/query |" \
        in printed

    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["backends"] == ["exact", "faiss-hnsw", "milvus"]
    for result in report["results"]:
        rows = {b["backend"]: b for b in result["backends"]}
        assert list(rows) == ["exact", "faiss-hnsw", "milvus"]
        assert rows["faiss-hnsw"]["options"] == {"efSearch": 16}
        assert rows["exact"]["recall_at_10_vs_exact"] == 1.0
        # the exact backend ranks as the comparison's exact numbers do
        assert rows["exact"]["precision"] == pytest.approx(result["metrics"]["precision"])
        for row in rows.values():
            assert row["n_queries"] == 6 and row["build_s"] >= 0 and row["ms_per_query"] > 0
            assert 0.9 <= row["recall_at_10_vs_exact"] <= 1.0  # 12 gallery items: every backend finds them
        gallery = Path(result["stores"]["train"])
        assert (gallery / "backends" / "faiss-hnsw" / "state.json").is_file()
        assert (gallery / "backends" / "milvus" / "milvus.db").exists()
    html = (out / "report.html").read_text()
    assert "Index backends (recall@10 against exact search)" in html


def test_leave_one_out_with_a_backend_never_returns_the_query(colour_catalog, tmp_path):
    records = [CatalogRecord(r.path, r.category) for r in colour_catalog]
    comparison = compare_encoders(records, ["test-thumb4"], tmp_path / "r", tsne_points=0, grid_queries=2,
                                  num_workers=0, progress=False, backends=["faiss-ivfpq"],
                                  backend_options={"faiss-ivfpq": {"nlist": 2}})
    (result,) = comparison.results
    (backend,) = result.backends
    assert comparison.leave_one_out and backend.n_queries == 24
    assert backend.recall_at_10 >= 0.9 and backend.options == {"nlist": 2}
    assert backend.precision[1] == pytest.approx(result.report.precision[1], abs=0.1)
    write_report(comparison, tmp_path / "r")
    assert "faiss-ivfpq | nlist=2" in (tmp_path / "r" / "report.md").read_text()


def test_an_ensemble_without_a_train_split_fails_before_anything_is_encoded(colour_catalog, tmp_path, capsys):
    folder = str(Path(colour_catalog[0].path).parents[1])  # class folders, no splits
    out = tmp_path / "r"
    code = main(["evaluate", "--data", folder, "--encoders", "test-thumb8,test-thumb4,ensemble:test-thumb8+test-thumb4",
                 "--out", str(out), "--workers", "0"])
    assert code == 1
    err = capsys.readouterr().err
    assert "ensemble:test-thumb8+test-thumb4: fitting an ensemble needs a train split" in err
    assert _nothing_encoded(out)


@pytest.mark.parametrize("argv, code, message", [
    (["--encoders", "test-thumb8,nope"], 2, "unknown encoder 'nope'"),
    (["--encoders", "test-thumb8,ensemble:test-thumb8"], 2, "neither a fitted ensemble folder nor a parts list"),
    (["--encoders", "test-thumb8", "--weights", "vgg1b=x.pth"], 2, "--weights names vgg1b"),
    (["--encoders", "test-thumb8", "--backend", "faiss-hnsw", "--backend-option", "nprobe=3"], 2,
     "faiss-hnsw has no option 'nprobe'"),
    (["--encoders", "test-thumb8", "--backend", "faiss-hnsw", "--backend-option", "milvus:uri=x.db"], 2,
     "'milvus' is not among the backends asked for"),
    (["--encoders", "test-thumb8", "--backend", "milvus", "--backend-option", "uri=http://127.0.0.1:9",
      "--backend-option", "timeout=2"], 1, "could not reach Milvus at http://127.0.0.1:9"),
])
def test_requirements_are_checked_first(colour_catalog, tmp_path, capsys, argv, code, message):
    if "milvus" in argv:
        pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
    data = _as_split_folders(colour_catalog, tmp_path / "data")
    out = tmp_path / "r"
    assert main(["evaluate", "--data", str(data), "--out", str(out), "--workers", "0", *argv]) == code
    assert message in capsys.readouterr().err
    assert _nothing_encoded(out)


def test_unknown_backend_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--backend", "annoy"])
    assert exc.value.code == 2
    assert "invalid choice: 'annoy'" in capsys.readouterr().err


def test_weights_unavailable_is_still_a_skip_not_an_error(colour_catalog, tmp_path):
    data = _as_split_folders(colour_catalog, tmp_path / "data")
    from clothsim.data import read_catalog

    comparison = compare_encoders(read_catalog(data), ["test-unavailable", "test-thumb4"], tmp_path / "r",
                                  tsne_points=0, grid_queries=1, num_workers=0, progress=False)
    assert [s.name for s in comparison.skipped] == ["test-unavailable"]
    assert [r.name for r in comparison.results] == ["test-thumb4"]


def test_split_backend_options():
    assert split_backend_options(["faiss-hnsw", "milvus"], {"efSearch": 32, "milvus:uri": "a.db"}) == {
        "faiss-hnsw": {"efSearch": 32}, "milvus": {"efSearch": 32, "uri": "a.db"}}
    with pytest.raises(UsageError):
        split_backend_options(["exact"], {"faiss-ivfpq:nprobe": 3})


def test_data_error_type_for_the_api(colour_catalog, tmp_path):
    records = [CatalogRecord(r.path, r.category) for r in colour_catalog]
    with pytest.raises(DataError, match="needs a train split"):
        compare_encoders(records, ["ensemble:test-thumb8+test-thumb4"], tmp_path / "r", num_workers=0,
                         progress=False)
    assert not (tmp_path / "r" / "images").exists()
