"""What int8 costs and gains per encoder: P@k against float32, vector agreement, forward speed.

Usage:
    python benchmarks/int8_precision.py --data ../shared/data/clothing-dataset-small \
        --encoders efficientnet_lite0 vgg16 --weights vgg16=../shared/weights/vgg16_features_imagenet.pth \
        [--calibration-images 64] [--method minmax] [--workers 2] [--json]

For each encoder, on the same photos: the test split is queried against the train split with the
float32 network (ONNX Runtime) and with its int8 quantization, calibrated on a seeded sample of the
train split (the photos being indexed, as ``clothsim index --precision int8`` does). Prints P@1/5/10 of
both, the cosine between each photo's int8 and float32 vectors (mean, min), and forward-only images/s of
both on one batch of 32 photos, measured side by side.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clothsim.data import read_catalog
from clothsim.encoders.registry import create_encoder
from clothsim.features import FeatureStore, extract_features
from clothsim.metrics import evaluate_retrieval
from clothsim.runtimes.int8 import build_int8_encoder
from clothsim.name_lists import parse_name_paths


def _encode(encoder, records, folder: Path, workers: int) -> tuple[np.ndarray, list[str]]:
    extract_features(records, encoder, folder, num_workers=workers, progress=False)
    vectors, items = FeatureStore.open(folder).load_vectors()
    return vectors, [item.record.category for item in items]


def _forward_rate(encoder, batch: torch.Tensor, repeats: int = 3) -> float:
    encoder.embed(batch)
    start = time.perf_counter()
    for _ in range(repeats):
        encoder.embed(batch)
    return repeats * len(batch) / (time.perf_counter() - start)


def measure(name: str, weights: str | None, records, args, work: Path) -> dict:
    train = [r for r in records if r.split == "train"]
    test = [r for r in records if r.split == "test"]
    fp32 = create_encoder(name, weights=weights, runtime="onnx")
    started = time.perf_counter()
    int8 = build_int8_encoder(fp32.source, train, count=args.calibration_images, method=args.method)
    calibration_s = time.perf_counter() - started
    result: dict = {"encoder": name, "calibration_images": args.calibration_images, "method": args.method,
                    "calibration_s": round(calibration_s, 1)}
    vectors = {}
    for label, encoder in (("fp32", fp32), ("int8", int8)):
        gallery, gallery_labels = _encode(encoder, train, work / name / label / "train", args.workers)
        queries, query_labels = _encode(encoder, test, work / name / label / "test", args.workers)
        report = evaluate_retrieval(queries, query_labels, gallery, gallery_labels, ks=(1, 5, 10))
        result.update({f"{label}_p_at_{k}": round(float(v), 4) for k, v in report.precision.items()})
        vectors[label] = np.concatenate([gallery, queries])
    cosine = np.sum(vectors["fp32"] * vectors["int8"], axis=1)
    result.update(cos_mean=round(float(cosine.mean()), 5), cos_min=round(float(cosine.min()), 5))
    from clothsim.images import load_image

    batch = torch.stack([fp32.transform(load_image(r.path)) for r in test[:32]])
    result["fp32_forward_img_s"] = round(_forward_rate(fp32, batch), 1)
    result["int8_forward_img_s"] = round(_forward_rate(int8, batch), 1)
    result["int8_speedup"] = round(result["int8_forward_img_s"] / result["fp32_forward_img_s"], 2)
    result["p5_change"] = round(result["int8_p_at_5"] - result["fp32_p_at_5"], 4)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="catalogue with train and test splits")
    parser.add_argument("--encoders", nargs="+", default=["efficientnet_lite0", "vgg16"])
    parser.add_argument("--weights", action="append", metavar="NAME=PATH", help="local weights of an encoder")
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--method", default="minmax", choices=["minmax", "percentile", "entropy"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    weights = parse_name_paths(args.weights)
    records = read_catalog(args.data)
    rows = []
    with tempfile.TemporaryDirectory(prefix="clothsim-int8-bench-") as work:
        for name in args.encoders:
            rows.append(measure(name, weights.get(name), records, args, Path(work)))
            if not args.json:
                r = rows[-1]
                print(f"{name}: P@5 fp32 {r['fp32_p_at_5']:.3f} int8 {r['int8_p_at_5']:.3f} "
                      f"(change {r['p5_change']:+.3f}); P@1 {r['fp32_p_at_1']:.3f} -> {r['int8_p_at_1']:.3f}; "
                      f"cos mean {r['cos_mean']:.4f} min {r['cos_min']:.4f}; forward {r['fp32_forward_img_s']:.1f} "
                      f"-> {r['int8_forward_img_s']:.1f} img/s (x{r['int8_speedup']:.2f}); "
                      f"calibration {r['calibration_s']:.0f} s", flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
