"""Indexing speed end to end: a plain torch loop against clothsim on torch, ONNX Runtime and int8.

Usage (needs the torch extra, for the reference loop and the torch runtime):
    python benchmarks/extraction.py --images ../shared/data/clothing-dataset-small --encoder efficientnet_lite0 \
        [--weights PATH] [--n 256] [--batch 32] [--workers 2] [--json]

In one run, on the same N photos (an even sample of the catalogue, in catalogue order):

* end to end (decode, preprocess, forward, write the vectors), images/s of
  (a) the reference loop a user writes from the torchvision documentation: eager torch, decoding in the
      main process, batches of 32, vectors saved with numpy;
  (b) ``clothsim`` with ``--runtime torch``; (c) with ``--runtime onnx``; (d) with ``--precision int8``
  (b-d through ``extract_features``: decoding in threads beside the runtime, a feature store written
  atomically); (e) ONNX Runtime fed by a pool of decoding *processes* instead (what the threads replace);
* forward only, on batches of the same photos preprocessed beforehand, images/s of each network, and
  end to end over forward only for ONNX Runtime (how much of the network's rate decoding leaves);
* the fraction of the machine's float32 limit the ONNX forward reaches: model GFLOPs per image (counted
  by ``torch.utils.flop_counter``, 2 per multiply-add) x images/s / the GFLOP/s of a numpy float32
  matrix product measured in the same run.

One-off costs (the ONNX export, int8 calibration) are done before timing and printed apart.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clothsim.data import read_catalog
from clothsim.encoders import create_encoder
from clothsim.encoders.base import collate, l2_normalize
from clothsim.encoders.factory import resolve_encoder
from clothsim.features import extract_features
from clothsim.images import load_image
from clothsim.runtimes.int8 import Calibration


def sgemm_gflops(n: int = 2048, repeats: int = 3) -> float:
    """Best float32 matrix-product rate of numpy's BLAS here, in GFLOP/s."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def model_gflops(module: torch.nn.Module, size: int) -> float:
    """GFLOPs of one forward pass of one image (2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def reference_loop(paths: list[str], module: torch.nn.Module, transform, batch_size: int, out: Path) -> float:
    """The loop from the torchvision docs; returns images/s end to end."""
    def run() -> None:
        rows = []
        for lo in range(0, len(paths), batch_size):
            batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[lo:lo + batch_size]])
            with torch.inference_mode():
                rows.append(module(batch).numpy())
        np.save(out, l2_normalize(np.concatenate(rows)))

    return len(paths) / _timed(run)


def clothsim_rate(records, encoder, folder: Path, batch_size: int, workers: int) -> float:
    seconds = _timed(lambda: extract_features(records, encoder, folder, batch_size=batch_size,
                                              num_workers=workers, progress=False))
    return len(records) / seconds


class _Prepare:
    """Decode and preprocess one photo as clothsim does (picklable, for a process pool)."""

    def __init__(self, preprocessing, min_side: int) -> None:
        self.preprocessing, self.min_side = preprocessing, min_side

    def __call__(self, path: str) -> np.ndarray:
        return self.preprocessing(load_image(path, min_side=self.min_side))


def process_pool_rate(paths: list[str], encoder, batch_size: int, workers: int) -> float:
    """ONNX Runtime fed by ``workers`` decoding processes (arrays pickled back), images/s end to end."""
    from multiprocessing import get_context

    prepare = _Prepare(encoder.preprocessing, encoder.decode_min_side)

    def run() -> None:
        with get_context("fork").Pool(workers) as pool:
            batch, rows = [], []
            for array in pool.imap(prepare, paths, chunksize=4):
                batch.append(array)
                if len(batch) == batch_size:
                    rows.append(encoder.embed(collate(batch)))
                    batch = []
            if batch:
                rows.append(encoder.embed(collate(batch)))

    return len(paths) / _timed(run)


def forward_rate(fn, batches: list, repeats: int = 2) -> float:
    """Images/s of ``fn`` over already preprocessed batches (the best of ``repeats`` passes)."""
    fn(batches[0])
    n = sum(len(b) for b in batches)
    return n / min(_timed(lambda: [fn(b) for b in batches]) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="a catalogue (folder, CSV, ...) of real photos")
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--n", type=int, default=256, help="photos to encode (default 256)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="clothsim's decoding threads (default 2)")
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    catalogue = read_catalog(args.images)
    step = max(1, len(catalogue) // args.n)
    records = catalogue[::step][: args.n]
    paths = [r.path for r in records]

    torch_encoder = create_encoder(args.encoder, weights=args.weights, runtime="torch")
    started = time.perf_counter()
    onnx_encoder = create_encoder(args.encoder, weights=args.weights, runtime="onnx")
    export_s = time.perf_counter() - started
    started = time.perf_counter()
    int8_encoder = resolve_encoder(onnx_encoder, precision="int8",
                                   calibration=Calibration(catalogue, images=args.calibration_images))
    calibration_s = time.perf_counter() - started
    module = torch_encoder.export_module().eval()  # the plain module, as a user would write it
    transform = torch_encoder.preprocessing.build_transform()

    gflops = sgemm_gflops()
    per_image = model_gflops(module, torch_encoder.input_size)
    with tempfile.TemporaryDirectory(prefix="clothsim-extraction-bench-") as work:
        work = Path(work)
        result = {"encoder": args.encoder, "images": len(records), "batch": args.batch, "workers": args.workers,
                  "torch_threads": torch.get_num_threads(), "sgemm_gflops": round(gflops, 1),
                  "model_gflops_per_image": round(per_image, 3), "onnx_export_s": round(export_s, 1),
                  "int8_calibration_s": round(calibration_s, 1)}
        result["reference_img_s"] = reference_loop(paths, module, transform, args.batch, work / "reference.npy")
        for label, encoder in (("torch", torch_encoder), ("onnx", onnx_encoder), ("int8", int8_encoder)):
            result[f"{label}_img_s"] = clothsim_rate(records, encoder, work / label, args.batch, args.workers)
        result["processes_img_s"] = process_pool_rate(paths, onnx_encoder, args.batch, args.workers)

        prepare = _Prepare(onnx_encoder.preprocessing, onnx_encoder.decode_min_side)
        arrays = [prepare(p) for p in paths]
        batches = [collate(arrays[lo:lo + args.batch]) for lo in range(0, len(arrays), args.batch)]
        with torch.inference_mode():
            result["reference_forward_img_s"] = forward_rate(lambda b: module(torch.from_numpy(b)), batches)
        for label, encoder in (("torch", torch_encoder), ("onnx", onnx_encoder), ("int8", int8_encoder)):
            result[f"{label}_forward_img_s"] = forward_rate(encoder.embed, batches)
        result["processes_forward_img_s"] = result["onnx_forward_img_s"]

    result["speedup_onnx"] = result["onnx_img_s"] / result["reference_img_s"]
    result["speedup_int8"] = result["int8_img_s"] / result["reference_img_s"]
    result["onnx_end_to_end_over_forward"] = result["onnx_img_s"] / result["onnx_forward_img_s"]
    result["flop_fraction_onnx"] = per_image * result["onnx_forward_img_s"] / gflops
    result["flop_fraction_int8_equiv"] = per_image * result["int8_forward_img_s"] / gflops
    result = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.encoder}: {len(records)} photos from {args.images}, batch {args.batch}, "
          f"{args.workers} decoding workers, sgemm {gflops:.0f} GFLOP/s, model {per_image:.2f} GFLOP/image")
    print(f"{'':34}{'end to end':>12}{'forward':>10}  images/s")
    rows = [("(a) reference torch loop", "reference"), ("(b) clothsim, torch runtime", "torch"),
            ("(c) clothsim, onnx runtime", "onnx"), ("(d) clothsim, onnx int8", "int8"),
            ("(e) onnx fed by decoding processes", "processes")]
    for title, key in rows:
        print(f"{title:34}{result[f'{key}_img_s']:>12.1f}{result[f'{key}_forward_img_s']:>10.1f}")
    print(f"onnx end to end / onnx forward only: {100 * result['onnx_end_to_end_over_forward']:.0f}%")
    print(f"onnx end to end / reference: x{result['speedup_onnx']:.2f}; int8: x{result['speedup_int8']:.2f}; "
          f"onnx forward at {100 * result['flop_fraction_onnx']:.0f}% of the sgemm limit")
    print(f"one-off: ONNX export {export_s:.1f} s (0 when cached), int8 calibration {calibration_s:.1f} s")


if __name__ == "__main__":
    main()
