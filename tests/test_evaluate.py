"""Tests of the encoder comparison (clothsim.evaluation) and the `clothsim evaluate` command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import _tiny_encoders  # registers the test-* encoders
import numpy as np
import pytest

from clothsim.cli.main import main
from clothsim.data.records import CatalogRecord
from clothsim.evaluation import choose_protocol, compare_encoders, write_report
from clothsim.evaluation.split_stores import encoder_slug
from clothsim.features import FeatureStore
from clothsim.metrics import evaluate_retrieval

ENCODERS = ["test-thumb8", "test-unavailable", "test-thumb4", "ensemble:test-thumb8+test-thumb4"]


def _copy_as_folder(records: list[CatalogRecord], root: Path) -> Path:
    """Lay the catalogue out as <split>/<category>/file, as the folder reader expects."""
    splits = ["train"] * 4 + ["validation"] * 2 + ["test"] * 2
    for i, r in enumerate(records):
        target = root / splits[i % 8] / r.category / Path(r.path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(r.path, target)
    return root


def test_choose_protocol():
    def recs(*splits):
        return [CatalogRecord(f"{i}.png", "a", split=s) for i, s in enumerate(splits)]

    assert choose_protocol(recs("train", "test", "validation")) == ("test", "train")
    assert choose_protocol(recs("gallery", "query")) == ("query", "gallery")
    assert choose_protocol(recs("train", "validation")) == ("validation", "train")
    assert choose_protocol(recs(None, None)) == (None, None)


def test_encoder_slug_is_a_safe_unique_folder_name():
    assert encoder_slug("vgg16") == "vgg16"
    a, b = encoder_slug("ensemble:/x/a b"), encoder_slug("ensemble:/x/a_b")
    assert a != b and "/" not in a and ":" not in a


def test_evaluate_command_end_to_end(colour_catalog, tmp_path: Path, capsys):
    data = _copy_as_folder(colour_catalog, tmp_path / "data")
    out = tmp_path / "report"
    argv = ["-q", "evaluate", "--data", str(data), "--encoders", ",".join(ENCODERS), "--out", str(out),
            "--workers", "0", "--tsne-points", "30", "--grid-queries", "3"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| test-thumb8 | 192 |" in printed

    report = json.loads((out / "report.json").read_text())
    labels = [r["label"] for r in report["results"]]
    w = report["results"][2]["details"]["part_weights"]
    # The fitted weights are part of the label, so two fits of the same parts never share a row or a file.
    assert labels == ["test-thumb8", "test-thumb4", f"ensemble:test-thumb8+test-thumb4 (weights {w[0]:g}/{w[1]:g})"]
    assert report["skipped"] == [{"name": "test-unavailable", "reason": _tiny_encoders.UNAVAILABLE_MESSAGE}]
    assert report["protocol"].startswith("test split (6 images) against train split (12 images)")
    ensemble = report["results"][2]
    assert ensemble["dim"] == 48 and ensemble["details"]["parts"] == ["test-thumb8", "test-thumb4"]
    assert sum(ensemble["details"]["part_weights"]) == pytest.approx(1)
    for result in report["results"]:
        assert result["images_per_second"] > 0
        counts = np.array(result["confusion_top1"]["counts"])
        assert counts.sum() == 6 and counts.shape == (3, 3)

    # The JSON numbers are those of evaluate_retrieval on the cached stores.
    queries = FeatureStore.open(report["results"][0]["stores"]["test"]).load_vectors()
    gallery = FeatureStore.open(report["results"][0]["stores"]["train"]).load_vectors()
    direct = evaluate_retrieval(queries[0], [i.record.category for i in queries[1]],
                                gallery[0], [i.record.category for i in gallery[1]], map_k=10)
    assert report["results"][0]["metrics"]["precision"]["5"] == pytest.approx(direct.precision[5])

    md = (out / "report.md").read_text()
    assert "| encoder | dim | P@1 | P@5 | P@10 | mAP@10 | instance R@1 | images/s |" in md
    # The instance guard ran on every gallery photo (12 < the default sample of 1000), for every encoder.
    assert {r["instance_guard"]["n_queries"] for r in report["results"]} == {12}
    assert all(0 <= r["instance_guard"]["recall_at_1"] <= 1 for r in report["results"])
    assert "Instance R@1: each of 12 gallery photos" in md
    assert "**test-unavailable** skipped: " + _tiny_encoders.UNAVAILABLE_MESSAGE in md
    html = (out / "report.html").read_text()
    assert html.count("<img ") == 4 + 3 + 3  # 4 shared charts, a confusion matrix and a grid per encoder
    assert 'src="images/' not in html and html.count("data:image/png;base64,") == 10
    for key in ("precision", "category_heatmap", "tsne", "category_distribution"):
        assert (out / report["figures"][key]).is_file()
        assert (out / report["figures"][key]).stat().st_mode & 0o044 == 0o044  # readable by others

    # Run again: every store is reused, and throughput is the one recorded when they were built.
    assert main(argv) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["results"][0]["images_per_second"] == report["results"][0]["images_per_second"]
    assert again["results"][0]["throughput_source"] == "recorded when the cached stores were built"


def test_leave_one_out_without_splits_and_all_skipped(colour_catalog, tmp_path: Path):
    records = [CatalogRecord(r.path, r.category) for r in colour_catalog]
    comparison = compare_encoders(records, ["test-unavailable", "test-thumb4"], tmp_path / "r", tsne_points=0,
                                  grid_queries=2, num_workers=0, progress=False)
    assert comparison.leave_one_out and comparison.protocol == "leave-one-out over all 24 images"
    assert comparison.results[0].report.n_queries == 24 and comparison.results[0].report.leave_one_out
    assert "tsne" not in comparison.figures
    write_report(comparison, tmp_path / "r")
    only_skipped = compare_encoders(records, ["test-unavailable"], tmp_path / "s", num_workers=0, progress=False)
    assert not only_skipped.results and only_skipped.skipped[0].name == "test-unavailable"
    paths = write_report(only_skipped, tmp_path / "s")
    assert "test-unavailable" in paths["html"].read_text()


def test_bad_weights_option_is_a_usage_error(tmp_path: Path, capsys):
    assert main(["evaluate", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--weights", "vgg16"]) == 2
    assert "NAME=PATH" in capsys.readouterr().err


@pytest.mark.browser
def test_report_renders_every_image_in_chromium(colour_catalog, tmp_path: Path):
    chromium, driver_path = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
    if not chromium.is_file() or not driver_path.is_file():
        pytest.skip("headless Chromium or chromedriver not installed")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    records = [CatalogRecord(r.path, r.category, split="train" if i % 4 else "test")
               for i, r in enumerate(colour_catalog)]
    comparison = compare_encoders(records, ["test-thumb4", "test-unavailable"], tmp_path / "r", tsne_points=20,
                                  grid_queries=2, num_workers=0, progress=False)
    html = write_report(comparison, tmp_path / "r")["html"]
    options = webdriver.ChromeOptions()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.binary_location = str(chromium)
    driver = webdriver.Chrome(service=Service(executable_path=str(driver_path)), options=options)
    try:
        driver.get(html.as_uri())
        widths = driver.execute_script(
            "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0);")
    finally:
        driver.quit()
    assert len(widths) == 4 + 1 + 1
    assert all(w > 0 for w in widths), widths
