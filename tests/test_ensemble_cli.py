"""`clothsim fit-ensemble`, then the fitted ensemble used by `clothsim index` and `clothsim search`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import _tiny_encoders  # noqa: F401  (registers test-thumb8 / test-thumb4)

from clothsim.cli.main import main


def test_fit_then_index_and_search(colour_catalog, tmp_path: Path, capsys):
    data = tmp_path / "data"
    splits = ["train"] * 5 + ["validation"] * 2 + ["test"]
    for i, r in enumerate(colour_catalog):
        target = data / splits[i % 8] / r.category / Path(r.path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(r.path, target)
    ens = tmp_path / "ens"
    assert main(["-q", "fit-ensemble", "--data", str(data), "--parts", "test-thumb8,test-thumb4", "--out", str(ens),
                 "--workers", "0", "--grid-step", "0.5", "--method", "concat"]) == 0
    meta = json.loads((ens / "ensemble.json").read_text())
    assert meta["method"] == "concat" and meta["dim"] == 96 and meta["info"]["n_train"] == 15
    assert f"ensemble:{ens.resolve()}" in capsys.readouterr().out

    index = tmp_path / "index"
    assert main(["-q", "index", str(data), "--split", "train", "--encoder", f"ensemble:{ens}", "--out", str(index),
                 "--workers", "0"]) == 0
    capsys.readouterr()
    query = next((data / "test" / "blue").iterdir())
    assert main(["search", str(query), "--index", str(index), "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)[0]["results"]
    assert [h["category"] for h in hits] == ["blue"] * 3
