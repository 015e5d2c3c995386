"""Plug-ins: a third-party distribution adds an encoder, a runtime, a reader and an index backend through
entry points alone, and clothsim's CLI and API use them; a broken plug-in is reported and skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from clothsim.plugins import PluginRegistry

PLUGIN_MODULE = '''
"""A third-party clothsim plug-in package, as someone outside the project would write it."""
from pathlib import Path

import numpy as np
import torch

from clothsim.data.records import CatalogRecord
from clothsim.encoders.base import Encoder, l2_normalize
from clothsim.index.exact import ExactIndex


class MeanColourEncoder(Encoder):
    """Mean RGB plus a constant: similar colours give similar vectors."""

    name = "dummy-mean"
    dim = 4
    weights_id = "none"

    @property
    def transform(self):
        return _mean_colour

    def embed(self, batch):
        rows = torch.as_tensor(batch).float().numpy()
        return l2_normalize(np.concatenate([rows, np.full((len(rows), 1), 0.05, np.float32)], axis=1))


def _mean_colour(image):
    return torch.tensor(np.asarray(image, dtype=np.float32).reshape(-1, 3).mean(axis=0) / 255.0)


class MeanColourPlugin:
    dim = 4
    input_size = 8
    description = "dummy: mean colour"

    def create(self, weights, device):
        return MeanColourEncoder()


class CountingRuntime:
    description = "dummy: runs the encoder's network as it is"
    priority = -1  # never chosen by auto
    executes = "network"

    def unavailable_reason(self):
        return None

    def load(self, spec, *, threads=None, device="cpu", network=None):
        return network


class ListReader:
    """A '.dummy' file: one 'path category' line per image, paths relative to the file."""

    description = "dummy: a .dummy list file"
    detect_priority = 60

    def detect(self, source):
        return source.endswith(".dummy") and Path(source).is_file()

    def read(self, source, **options):
        root = Path(source).parent
        rows = [line.split() for line in Path(source).read_text().splitlines() if line.strip()]
        return [CatalogRecord(str(root / path), category) for path, category in rows]


class MarkedIndex(ExactIndex):
    name = "dummy-exact"


class MarkedBackend:
    """Exact search, plus a file of its own beside the store that open() insists on."""

    description = "dummy: exact search with a marker file"

    def build(self, store, **options):
        folder = store.root / "backends" / "dummy-exact"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "built.json").write_text(str(len(store)))
        return MarkedIndex(store, **options)

    def open(self, store, **options):
        if not (store.root / "backends" / "dummy-exact" / "built.json").is_file():
            raise FileNotFoundError("dummy-exact was never built here")
        return MarkedIndex(store, **options)


class NotAPlugin:
    """Lacks every method a plug-in needs."""
'''

ENTRY_POINTS = '''
[clothsim.encoders]
dummy-mean = dummy_clothsim_plugin:MeanColourPlugin
broken-import = no_such_module_for_clothsim:Thing
broken-shape = dummy_clothsim_plugin:NotAPlugin

[clothsim.runtimes]
dummy-rt = dummy_clothsim_plugin:CountingRuntime

[clothsim.readers]
dummy-list = dummy_clothsim_plugin:ListReader

[clothsim.index_backends]
dummy-exact = dummy_clothsim_plugin:MarkedBackend
'''

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (20, 40, 210)}


@pytest.fixture()
def plugin_dist(tmp_path: Path) -> Path:
    """A plug-in 'installed' as a folder on sys.path holding the module and its dist-info."""
    site = tmp_path / "site"
    info = site / "dummy_clothsim_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "dummy_clothsim_plugin.py").write_text(PLUGIN_MODULE)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dummy-clothsim-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(ENTRY_POINTS))
    return site


@pytest.fixture()
def dummy_catalogue(tmp_path: Path) -> Path:
    folder = tmp_path / "shop"
    folder.mkdir()
    lines = []
    for category, rgb in COLOURS.items():
        for i in range(4):
            shade = tuple(max(0, min(255, c + 6 * i - 9)) for c in rgb)
            Image.new("RGB", (16, 16), shade).save(folder / f"{category}{i}.png")
            lines.append(f"{category}{i}.png {category}")
    (folder / "catalogue.dummy").write_text("\n".join(lines) + "\n")
    return folder / "catalogue.dummy"


def _registries() -> list[PluginRegistry]:
    from clothsim.data.registry import reader_registry
    from clothsim.encoders.registry import encoder_registry, family_registry
    from clothsim.index.registry import backend_registry
    from clothsim.runtimes import runtime_registry

    return [encoder_registry, family_registry, runtime_registry, backend_registry, reader_registry]


@pytest.fixture()
def installed(plugin_dist: Path, monkeypatch: pytest.MonkeyPatch):
    """The plug-in visible to this process; the registries re-read the entry points before and after."""
    monkeypatch.syspath_prepend(str(plugin_dist))
    for registry in _registries():
        registry.reload()
    yield plugin_dist
    sys.modules.pop("dummy_clothsim_plugin", None)
    monkeypatch.undo()
    for registry in _registries():
        registry.reload()


def _cli(args: list[str], site: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "clothsim.cli.main", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_cli_uses_every_kind_of_plugin_and_reports_broken_ones(plugin_dist, dummy_catalogue, tmp_path):
    listed = _cli(["plugins", "--json"], plugin_dist, tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {(r["group"], r["name"]): r["status"] for r in json.loads(listed.stdout)}
    for key in [("clothsim.encoders", "dummy-mean"), ("clothsim.runtimes", "dummy-rt"),
                ("clothsim.readers", "dummy-list"), ("clothsim.index_backends", "dummy-exact")]:
        assert rows[key] == "ok", key
    assert rows[("clothsim.encoders", "vgg16")] == "ok"  # the built-ins are untouched
    assert "no_such_module_for_clothsim" in rows[("clothsim.encoders", "broken-import")]
    assert "does not implement EncoderPlugin" in rows[("clothsim.encoders", "broken-shape")]
    assert "broken-import" in listed.stderr and "skipped" in listed.stderr

    index_dir = tmp_path / "idx"
    built = _cli(["index", str(dummy_catalogue), "--encoder", "dummy-mean", "--runtime", "dummy-rt",
                  "--backend", "dummy-exact", "--out", str(index_dir), "--workers", "0"], plugin_dist, tmp_path)
    assert built.returncode == 0, built.stderr
    assert "indexed 12 images with dummy-mean" in built.stdout
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert (manifest["index_backend"], manifest["runtime"]) == ("dummy-exact", "dummy-rt")
    assert (index_dir / "backends" / "dummy-exact" / "built.json").read_text() == "12"

    query = tmp_path / "query.png"
    Image.new("RGB", (16, 16), (200, 40, 40)).save(query)
    found = _cli(["search", str(query), "--index", str(index_dir), "-k", "4", "--json"], plugin_dist, tmp_path)
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)[0]["results"]
    assert [h["category"] for h in hits] == ["red"] * 4

    broken = _cli(["index", str(dummy_catalogue), "--encoder", "broken-import", "--out", str(tmp_path / "b"),
                   "--workers", "0"], plugin_dist, tmp_path)
    assert broken.returncode == 2
    assert "broken-import" in broken.stderr and "failed to load" in broken.stderr


def test_api_uses_the_plugins(installed, dummy_catalogue, tmp_path):
    import clothsim
    from clothsim.data import detect_format

    assert detect_format(dummy_catalogue) == "dummy-list"
    records = clothsim.read_catalog(dummy_catalogue)
    assert len(records) == 12
    names = [info.name for info in clothsim.list_encoders()]
    assert "dummy-mean" in names and "broken-import" not in names and "vgg16" in names
    index, report = clothsim.SimilarityIndex.build(records, tmp_path / "idx", encoder="dummy-mean",
                                                   runtime="dummy-rt", backend="dummy-exact",
                                                   num_workers=0, progress=False)
    assert report.n_encoded == 12 and index.backend.name == "dummy-exact" and index.encoder.runtime == "dummy-rt"
    reopened = clothsim.SimilarityIndex.open(tmp_path / "idx", runtime="dummy-rt")
    assert reopened.backend.name == "dummy-exact"  # from the record, not from the caller
    hits = reopened.search(Image.new("RGB", (16, 16), (30, 50, 200)), k=3)
    assert [h.record.category for h in hits] == ["blue"] * 3
    from clothsim.encoders.registry import encoder_registry

    assert "broken-import" in encoder_registry.broken()


def test_a_broken_plugin_leaves_the_others_working(installed, caplog):
    from clothsim.encoders.registry import create_encoder, encoder_registry

    caplog.set_level("WARNING", logger="clothsim.plugins")
    encoder = create_encoder("dummy-mean")
    assert encoder.dim == 4
    assert {"broken-import", "broken-shape"} <= set(encoder_registry.broken())
    assert "broken-import" in caplog.text and "no_such_module_for_clothsim" in caplog.text


def test_registry_rejects_a_duplicate_and_names_the_known_ones():
    from clothsim.encoders.registry import encoder_registry
    from clothsim.errors import UsageError

    with pytest.raises(UsageError, match="unknown encoder 'nope'; known: .*efficientnet_lite0"):
        encoder_registry.get("nope")
    with pytest.raises(ValueError, match="registered twice"):
        encoder_registry.register("vgg16", object())


LAZY_CHECK = """
import sys
{statement}
heavy = [m for m in ("clothsim.ensemble", "clothsim.training", "clothsim.evaluation", "matplotlib", "torch")
         if m in sys.modules]
print("HEAVY:" + ",".join(heavy))
"""


@pytest.mark.parametrize("statement, allowed", [
    ("import clothsim.encoders", set()),
    ("from clothsim.cli.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass", set()),
    ("from clothsim.cli.main import main\ntry:\n    main(['index', '--help'])\nexcept SystemExit:\n    pass", set()),
    ("from clothsim.cli.main import main\ntry:\n    main(['search', '--frobnicate'])\nexcept SystemExit:\n    pass",
     set()),
    ("from clothsim import create_encoder\ncreate_encoder('vgg16', weights='random')", {"torch"}),
])
def test_what_is_imported_stays_small(statement, allowed):
    out = subprocess.run([sys.executable, "-c", LAZY_CHECK.format(statement=statement)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    [line] = [line for line in out.stdout.splitlines() if line.startswith("HEAVY:")]
    loaded = set(filter(None, line.removeprefix("HEAVY:").split(",")))
    assert loaded <= allowed, loaded
