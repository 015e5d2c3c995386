"""The light core, measured: what ``pip install clothsim`` installs, and what a command costs without torch.

Usage:
    python benchmarks/light_core.py --data ../shared/data/clothing-dataset-small [--work /tmp/clothsim-light]
    python benchmarks/light_core.py --data ../shared/data/clothing-dataset-small --compare-torch

The first form, from any Python (it makes its own environments):

1. ``pip install`` of this checkout (the core, no extra) into a fresh virtual environment: its size on
   disk (``du``), whether torch is in it, and how long the install took (the pip cache is warm after the
   first run);
2. the README's main-job command on a fresh clone (``git clone``, then ``./scripts/setup.sh &&
   .venv/bin/clothsim demo``), timed whole;
3. with the core environment: ``clothsim index`` of the train split, then ``clothsim search PHOTO --index
   IDX`` run several times, wall time and peak memory (max RSS) of the whole process, start included;
   a search for a file that does not exist; ``clothsim --help``.

The second form, from an environment with the torch extra: vectors of the shipped ONNX model with
Pillow/numpy preprocessing against the torch network with torchvision's transform, on every photo of the
test split (cosine per row), and whether both give the same top-5 for every test photo searched in the
train split.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_measured(argv: list[str], cwd: Path | None = None, env: dict | None = None) -> tuple[int, float, float, str]:
    """``(exit code, wall seconds, peak RSS in MiB, stderr)`` of one process."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, usage.ru_maxrss / 1024, stderr


def du_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0]) / 1e6


def core_environment(work: Path) -> dict:
    venv = work / "core-venv"
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    started = time.perf_counter()
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(REPO)], check=True)
    seconds = time.perf_counter() - started
    has_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True).returncode == 0
    return {"venv": str(venv), "size_mb": round(du_mb(venv), 1), "install_s": round(seconds, 1),
            "torch_installed": has_torch}


def main_job(work: Path) -> dict:
    clone = work / "clone"
    if clone.exists():
        shutil.rmtree(clone)
    started = time.perf_counter()
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    done = subprocess.run(["bash", "-c", "./scripts/setup.sh && .venv/bin/clothsim -q demo"], cwd=clone,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the main-job command failed:\n{done.stdout}\n{done.stderr}")
    precision = [line for line in done.stdout.splitlines() if line.startswith("precision@5")]
    return {"seconds": round(seconds, 1), "precision@5": precision[0].split()[1] if precision else None,
            "note": "uncommitted changes are not in the clone: commit first"}


def commands(venv: Path, data: Path, work: Path, repeats: int) -> dict:
    clothsim = str(venv / "bin" / "clothsim")
    index = work / "train-index"
    if index.exists():
        shutil.rmtree(index)
    code, wall, rss, err = run_measured([clothsim, "-q", "index", str(data / "train"), "--out", str(index)])
    if code != 0:
        raise SystemExit(f"clothsim index failed: {err}")
    photo = sorted((data / "test").glob("*/*.jpg"))[0]
    searches = [run_measured([clothsim, "search", str(photo), "--index", str(index)]) for _ in range(repeats)]
    if any(s[0] != 0 for s in searches):
        raise SystemExit(f"clothsim search failed: {searches[0][3]}")
    missing = [run_measured([clothsim, "search", "nosuch.jpg", "--index", str(index)]) for _ in range(repeats)]
    helps = [run_measured([clothsim, "--help"]) for _ in range(repeats)]
    return {
        "index_items": sum(1 for _ in (data / "train").glob("*/*")), "index_s": round(wall, 1),
        "search_wall_s_median": round(statistics.median(s[1] for s in searches), 3),
        "search_wall_s_all": [round(s[1], 3) for s in searches],
        "search_peak_rss_mib": round(max(s[2] for s in searches), 1),
        "missing_file_wall_s_median": round(statistics.median(s[1] for s in missing), 3),
        "missing_file_exit": missing[0][0],
        "help_wall_s_median": round(statistics.median(s[1] for s in helps), 3),
    }


def compare_torch(data: Path) -> dict:
    """The shipped ONNX model and numpy preprocessing against the torch network and torchvision."""
    import numpy as np
    import torch

    from clothsim.data import read_folder_catalog
    from clothsim.encoders import create_encoder
    from clothsim.encoders.factory import build_network
    from clothsim.images import load_image
    from clothsim.index.topk import topk_cosine

    light = create_encoder()  # the shipped model file on ONNX Runtime
    network = build_network("efficientnet_lite0")
    transform = network.preprocessing.build_transform()

    def vectors(records) -> tuple[np.ndarray, np.ndarray]:
        ours, theirs = [], []
        for lo in range(0, len(records), 32):
            images = [load_image(r.path) for r in records[lo:lo + 32]]
            ours.append(light.encode_images(images))
            with torch.inference_mode():
                theirs.append(network.embed(torch.stack([transform(image) for image in images])))
        return np.concatenate(ours), np.concatenate(theirs)

    test = read_folder_catalog(data / "test")
    train = read_folder_catalog(data / "train")
    q_ours, q_torch = vectors(test)
    g_ours, g_torch = vectors(train)
    cosine = np.sum(q_ours * q_torch, axis=1)
    top_ours, _ = topk_cosine(q_ours, g_ours, 5)
    top_torch, _ = topk_cosine(q_torch, g_torch, 5)
    same = [list(a) == list(b) for a, b in zip(top_ours, top_torch)]
    return {"test_photos": len(test), "gallery_photos": len(train), "min_cosine": float(cosine.min()),
            "same_top5": f"{sum(same)} of {len(same)}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="clothing-dataset-small (train/ and test/)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/clothsim-light"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-main-job", action="store_true", help="leave out the fresh-clone main job")
    parser.add_argument("--compare-torch", action="store_true", help="only the vectors against torch")
    args = parser.parse_args()
    data = args.data.resolve()
    if args.compare_torch:
        print(json.dumps(compare_torch(data), indent=2))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "load_average": os.getloadavg()}
    result["core_environment"] = env = core_environment(args.work)
    if not args.skip_main_job:
        result["main_job"] = main_job(args.work)
    result["commands"] = commands(Path(env["venv"]), data, args.work, args.repeats)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
