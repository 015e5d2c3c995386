"""Near-duplicate detection measured: quality on real photos against imagededup, and scale on 1M vectors.

Usage:
    python benchmarks/duplicates.py quality --data ../shared/data/clothing-dataset-small [--originals 300]
    python benchmarks/duplicates.py scale --rows 1000000 --backend faiss-hnsw --work /tmp/dup-1m
    python benchmarks/duplicates.py scale --rows 100000 --backend exact --work /tmp/dup-100k

``quality`` builds a labelled set from the train split: originals, one altered copy of each kind per
original (resize to 50%, JPEG quality 50-90, a crop keeping 80-100%, mirror, +-10% brightness and
contrast; clothsim.duplicates.alterations), and distractors (other photos of the same categories).
clothsim indexes it, calibrates its threshold on the index (its own generated copies, another seed),
groups it, and is scored by pairs: recall over (original, copy) pairs, per kind and overall, and precision
over every pair it puts in one group (a pair is right when both photos come from one original). Beside it,
in the same run on the same files, imagededup's hash methods (PHash, DHash, WHash, AHash) at their default
threshold and at the threshold of their best F1 (swept), and its CNN method if it can run here.

``scale`` writes a store of random unit vectors with planted duplicate groups (2-5 members each, cosine
0.93-0.99 to their group's centre), builds the backend (or reuses it), and times the whole grouping
(``clothsim duplicates``'s work) with the peak memory of the process against the size of the vectors;
then imagededup's CNN grouping (``find_duplicates`` over an encoding map of the same vectors) at
growing sizes until it runs past ``--imagededup-limit-s`` or out of memory (in a child process).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

# ----- quality ---------------------------------------------------------------------------------------


def build_set(data: Path, work: Path, n_originals: int, n_distractors: int, seed: int) -> dict:
    """The labelled set as files in one folder; returns each file's family (its original) and kind."""
    from clothsim.duplicates.alterations import altered_copies
    from clothsim.images import load_image

    photos = sorted((data / "train").glob("*/*.jpg"))
    rng = random.Random(seed)
    rng.shuffle(photos)
    originals, distractors = photos[:n_originals], photos[n_originals:n_originals + n_distractors]
    folder = work / "set"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    family, kind = {}, {}
    for number, photo in enumerate(originals):
        name = f"o{number:04d}.jpg"
        shutil.copy(photo, folder / name)
        family[name], kind[name] = number, "original"
        for alteration, copy in altered_copies(load_image(photo), f"{seed}:{number}").items():
            copy_name = f"o{number:04d}-{alteration}.jpg"
            copy.save(folder / copy_name, quality=95)
            family[copy_name], kind[copy_name] = number, alteration
    for number, photo in enumerate(distractors):
        name = f"d{number:04d}.jpg"
        shutil.copy(photo, folder / name)
        family[name], kind[name] = -1 - number, "distractor"
    return {"folder": folder, "family": family, "kind": kind}


def score_pairs(pairs: set[frozenset[str]], family: dict[str, int], kind: dict[str, str]) -> dict:
    """Pair recall over (original, copy) pairs, per kind, and precision over the pairs predicted."""
    right = sum(1 for p in pairs if len({family[name] for name in p}) == 1)
    precision = right / len(pairs) if pairs else 1.0
    by_kind = defaultdict(lambda: [0, 0])
    originals = {f: n for n, f in family.items() if kind[n] == "original"}
    for name, k in kind.items():
        if k in ("original", "distractor"):
            continue
        hit = frozenset({name, originals[family[name]]}) in pairs
        by_kind[k][0] += hit
        by_kind[k][1] += 1
    found = sum(v[0] for v in by_kind.values())
    total = sum(v[1] for v in by_kind.values())
    recall = found / total if total else 0.0
    f1 = 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision)
    return {"recall": round(recall, 4), "precision": round(precision, 4), "f1": round(f1, 4),
            "predicted_pairs": len(pairs), "recall_by_kind": {k: round(v[0] / v[1], 4) for k, v in by_kind.items()}}


def group_pairs(groups: list[list[str]]) -> set[frozenset[str]]:
    return {frozenset((a, b)) for g in groups for i, a in enumerate(g) for b in g[i + 1:]}


def clothsim_quality(labelled: dict, work: Path, seed: int) -> dict:
    from clothsim.data import read_catalog
    from clothsim.duplicates.calibration import calibrate, record_calibration
    from clothsim.duplicates.finder import find_duplicates
    from clothsim.similarity_index import SimilarityIndex

    index_dir = work / "index"
    if index_dir.exists():
        shutil.rmtree(index_dir)
    started = time.perf_counter()
    index, _ = SimilarityIndex.build(read_catalog(labelled["folder"]), index_dir, progress=False)
    index_s = time.perf_counter() - started
    started = time.perf_counter()
    calibration = calibrate(index, sample=200, seed=seed + 1, progress=False)
    record_calibration(index, calibration)
    calibrate_s = time.perf_counter() - started
    report = find_duplicates(SimilarityIndex.open(index_dir), progress=False)
    groups = [[Path(report.paths[i]).name for i in g.members] for g in report.groups]
    result = score_pairs(group_pairs(groups), labelled["family"], labelled["kind"])
    result.update(threshold=report.threshold, index_s=round(index_s, 1), calibrate_s=round(calibrate_s, 1),
                  group_s=round(report.seconds, 2), calibration=calibration.to_record())
    return result


def imagededup_quality(labelled: dict) -> dict:
    try:
        from imagededup import methods
    except ImportError as exc:
        return {"error": f"imagededup is not installed ({exc}): pip install imagededup"}
    results = {}
    folder = labelled["folder"]
    for name in ("PHash", "DHash", "WHash", "AHash"):
        hasher = getattr(methods, name)(verbose=False)
        started = time.perf_counter()
        encodings = hasher.encode_images(image_dir=str(folder))
        encode_s = time.perf_counter() - started
        rows = {}
        for threshold in range(0, 33, 2):
            found = hasher.find_duplicates(encoding_map=encodings, max_distance_threshold=threshold)
            pairs = {frozenset((a, b)) for a, dupes in found.items() for b in dupes}
            rows[threshold] = score_pairs(pairs, labelled["family"], labelled["kind"])
        best = max(rows, key=lambda t: rows[t]["f1"])
        results[name] = {"default (10)": rows[10], f"best F1 ({best})": rows[best], "encode_s": round(encode_s, 1)}
    try:
        methods.CNN(verbose=False)
        results["CNN"] = {"note": "ran"}
    except Exception as exc:  # noqa: BLE001 - report why it cannot run here, whatever it raises
        results["CNN"] = {"error": f"cannot run offline: building it downloads MobileNetV3's ImageNet weights "
                                   f"from PyTorch's servers ({type(exc).__name__}: {str(exc)[:120]})"}
    return results


def quality(args: argparse.Namespace) -> dict:
    work = args.work / "quality"
    work.mkdir(parents=True, exist_ok=True)
    labelled = build_set(args.data, work, args.originals, args.distractors, args.seed)
    n_files = len(labelled["family"])
    result = {"set": {"originals": args.originals, "copies": args.originals * 5, "distractors": args.distractors,
                      "files": n_files}}
    result["clothsim"] = clothsim_quality(labelled, work, args.seed)
    result["imagededup"] = imagededup_quality(labelled)
    best_hash = max((v for k, v in result["imagededup"].items() if k != "CNN" and isinstance(v, dict)
                     and "encode_s" in v), key=lambda v: max(r["f1"] for r in v.values() if isinstance(r, dict)),
                    default=None)
    if best_hash is not None:
        best_f1 = max(r["f1"] for r in best_hash.values() if isinstance(r, dict))
        result["clothsim_f1_beats_best_hash"] = result["clothsim"]["f1"] > best_f1
    return result


# ----- scale -----------------------------------------------------------------------------------------


def planted_store(root: Path, rows: int, dim: int, groups: int, seed: int) -> dict:
    """A store of random unit vectors with planted duplicate groups; reused when it is there."""
    from clothsim.data.records import CatalogRecord
    from clothsim.features.store import FeatureStore

    truth = root / "planted.json"
    if FeatureStore.exists(root) and truth.is_file():
        return json.loads(truth.read_text())
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(seed)
    fingerprint = {"encoder": "planted-random", "weights": "none", "dim": dim, "preprocessing": None}
    store = FeatureStore.create(root, fingerprint)
    sizes = rng.integers(2, 6, groups)
    members = rng.choice(rows, int(sizes.sum()), replace=False)
    planted, cursor = [], 0
    for size in sizes:
        planted.append(sorted(int(i) for i in members[cursor:cursor + size]))
        cursor += size
    centre_of = {}
    for number, group in enumerate(planted):
        for item in group:
            centre_of[item] = number
    centres = rng.standard_normal((groups, dim)).astype(np.float32)
    chunk = 50_000
    with store.writer():
        for lo in range(0, rows, chunk):
            hi = min(rows, lo + chunk)
            block = rng.standard_normal((hi - lo, dim)).astype(np.float32)
            for item in range(lo, hi):
                number = centre_of.get(item)
                if number is not None:  # a copy: the group's centre plus a little noise (cos 0.93-0.99)
                    noise = rng.uniform(0.15, 0.38)
                    centre = centres[number] / np.linalg.norm(centres[number])
                    other = block[item - lo] / np.linalg.norm(block[item - lo])
                    block[item - lo] = centre + noise * other
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            records = [CatalogRecord(f"/planted/{i}.jpg", None) for i in range(lo, hi)]
            store.append(block, records)
    info = {"rows": rows, "dim": dim, "groups": planted}
    truth.write_text(json.dumps(info))
    return info


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scale(args: argparse.Namespace) -> dict:
    from clothsim.duplicates.finder import find_duplicates
    from clothsim.features.store import FeatureStore
    from clothsim.index.registry import build_index, open_index

    root = args.work / f"store-{args.rows}"
    info = planted_store(root, args.rows, args.dim, args.groups, args.seed)
    store = FeatureStore.open(root)
    options = dict(json.loads(args.backend_options)) if args.backend_options else {}
    started = time.perf_counter()
    if store.manifest.get("index_backend") == args.backend:
        backend = open_index(store)
        build_s = None
    else:
        backend = build_index(store, args.backend, **options)
        build_s = time.perf_counter() - started
    vectors_mib = store.total_rows * store.dim * 4 / 2**20

    class _Index:  # what find_duplicates needs of an open index: its store and backend
        pass

    index = _Index()
    index.store, index.backend = store, backend
    rss_before = peak_rss_mib()
    report = find_duplicates(index, threshold=args.threshold, neighbours=args.neighbours, progress=True,
                             save=False)
    planted = {frozenset(g) for g in info["groups"]}
    planted_pairs = group_pairs([sorted(g) for g in planted])
    found_pairs = group_pairs([sorted(g.members) for g in report.groups])
    # Two copies of one centre can be further apart than the threshold (each is 0.93-0.99 from the centre,
    # so from each other down to about 0.87), and a grouping that keeps every two members at least the
    # threshold apart must then split their group. Recall is also given over the planted groups whose
    # members are all at least the threshold from each other: every pair of those must be found.
    def whole(group: frozenset) -> bool:
        vectors = store.vectors_for(np.asarray(sorted(group)))
        cosines = vectors @ vectors.T
        return bool(cosines[np.triu_indices(len(group), 1)].min() >= args.threshold)

    findable = group_pairs([sorted(g) for g in planted if whole(g)])
    result = {"rows": args.rows, "dim": args.dim, "backend": args.backend, "options": options,
              "build_s": None if build_s is None else round(build_s, 1), "group_s": round(report.seconds, 1),
              "vectors_mib": round(vectors_mib, 1), "peak_rss_mib": round(peak_rss_mib(), 1),
              "peak_rss_before_grouping_mib": round(rss_before, 1),
              "planted_pairs_found": round(len(planted_pairs & found_pairs) / len(planted_pairs), 4),
              "pairs_in_groups_within_threshold": len(findable),
              "pairs_in_groups_within_threshold_found": round(len(findable & found_pairs) / max(1, len(findable)), 4),
              "pairs_outside_planted": len(found_pairs - planted_pairs), "groups": len(report.groups),
              "note": report.note, "load_average": os.getloadavg()}
    if args.imagededup_sizes:
        result["imagededup_cnn"] = [imagededup_at(root, n, args.threshold, args.imagededup_limit_s)
                                    for n in args.imagededup_sizes]
    return result


_IMAGEDEDUP_CHILD = """
import json, sys, time, resource
import numpy as np
from clothsim.features.store import FeatureStore
from imagededup.methods import CNN
from imagededup.utils.models import CustomModel
import torch
root, n, threshold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
store = FeatureStore.open(root)
ids = store.live_ids()[:n]
vectors = store.vectors_for(ids)
encodings = {str(i): vectors[row] for row, i in enumerate(ids)}
# Its own MobileNetV3 would be downloaded; the encoding map makes the model unused: a placeholder one.
cnn = CNN(verbose=False, model_config=CustomModel(model=torch.nn.Identity(), transform=None, name="given"))
started = time.perf_counter()
found = cnn.find_duplicates(encoding_map=encodings, min_similarity_threshold=threshold)
print(json.dumps({"n": n, "seconds": round(time.perf_counter() - started, 1),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "items_with_duplicates": sum(1 for v in found.values() if v)}))
"""


def imagededup_at(root: Path, n: int, threshold: float, limit_s: float) -> dict:
    try:
        done = subprocess.run([sys.executable, "-c", _IMAGEDEDUP_CHILD, str(root), str(n), str(threshold)],
                              capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return {"n": n, "error": f"ran past {limit_s:.0f} s"}
    if done.returncode != 0:
        killed = done.returncode in (-9, 137)
        return {"n": n, "error": "killed (out of memory)" if killed else done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--data", type=Path, required=True)
    q.add_argument("--originals", type=int, default=300)
    q.add_argument("--distractors", type=int, default=900)
    s = sub.add_parser("scale")
    s.add_argument("--rows", type=int, default=1_000_000)
    s.add_argument("--dim", type=int, default=1280)
    s.add_argument("--groups", type=int, default=10_000, help="planted duplicate groups")
    s.add_argument("--backend", default="faiss-hnsw")
    s.add_argument("--backend-options", default=None, help="JSON of build options, e.g. '{\"M\": 32}'")
    s.add_argument("--threshold", type=float, default=0.9)
    s.add_argument("--neighbours", type=int, default=10)
    s.add_argument("--imagededup-sizes", type=int, nargs="*", default=[],
                   help="sizes at which to run imagededup's CNN grouping on the same vectors")
    s.add_argument("--imagededup-limit-s", type=float, default=1800)
    for p in (q, s):
        p.add_argument("--work", type=Path, default=Path("/tmp/clothsim-duplicates"))
        p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M")
    result = quality(args) if args.what == "quality" else scale(args)
    result["date"] = started
    result["load_average_end"] = os.getloadavg()
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
