"""Rebuild src/clothsim/assets/clothing_sample/ from clothing-dataset-small (CC0 1.0).

Run from anywhere (the output is committed)::

    .venv/bin/python scripts/make_clothing_sample.py [--source DIR] [--out DIR] [--seed 0]

Per category, 22 photos of the dataset's ``train`` split become the demo gallery and 8 of its ``test``
split the queries. Within each (split, category) folder the file names are sorted and a random
generator seeded with ``"<seed>/<split>/<category>"`` draws the sample, so the same source and seed
always give the same files. Each photo is turned upright by its EXIF orientation, scaled down so its
short side is 256 px (never up), and saved as a baseline JPEG at quality 85 with 4:2:0 chroma
subsampling and no metadata (no EXIF, no ICC profile). ``sources.csv`` lists where each file came
from. Only Pillow is needed; clothsim itself is not imported.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "clothing-dataset-small"
DEFAULT_OUT = REPO / "src" / "clothsim" / "assets" / "clothing_sample"
SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg")
# Fixed encoder settings: changing any of them changes every output byte.
JPEG_SETTINGS = {"format": "JPEG", "quality": 85, "subsampling": "4:2:0", "optimize": True, "progressive": False}


@dataclass(frozen=True)
class SampledPhoto:
    """One photo of the sample: where it came from and what was written."""

    split: str
    category: str
    file: str
    source: str
    source_size: tuple[int, int]
    size: tuple[int, int]
    n_bytes: int


def choose(files: list[str], count: int, seed: int, split: str, category: str) -> list[str]:
    """``count`` names drawn from ``files`` (sorted first), returned sorted.

    A string seed per (split, category) keeps each folder's draw independent of the others, so a change
    of count in one category leaves the rest of the sample as it was.

    Raises:
        ValueError: The folder has fewer than ``count`` photos.
    """
    names = sorted(files)
    if len(names) < count:
        raise ValueError(f"{split}/{category} has {len(names)} photos, fewer than the {count} asked for")
    rng = random.Random(f"{seed}/{split}/{category}")
    return sorted(rng.sample(names, count))


def shrink(path: Path, short_side: int) -> tuple[bytes, tuple[int, int], tuple[int, int]]:
    """The photo at ``path`` upright, scaled to ``short_side`` (never enlarged), as metadata-free JPEG.

    Returns:
        ``(jpeg bytes, source size, output size)``.
    """
    with Image.open(path) as opened:
        source_size = opened.size
        image = ImageOps.exif_transpose(opened).convert("RGB")
    width, height = image.size
    scale = short_side / min(width, height)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    # A fresh image carries no info dict, so nothing (EXIF, ICC, comments) reaches the output.
    clean = Image.new("RGB", image.size)
    clean.paste(image)
    buffer = io.BytesIO()
    clean.save(buffer, **JPEG_SETTINGS)
    return buffer.getvalue(), source_size, clean.size


def build_sample(source: Path, out: Path, counts: dict[str, int], seed: int, short_side: int) -> list[SampledPhoto]:
    """Write ``out/<split>/<category>/<name>.jpg`` and ``out/sources.csv``; other files in ``out`` stay.

    The new split folders are written to a temporary folder beside ``out`` and only then swapped in, so
    an interrupted run leaves the previous sample whole.

    Raises:
        FileNotFoundError: ``source`` lacks a split folder.
        ValueError: The splits have different categories, or a folder has too few photos.
    """
    categories = {split: sorted(p.name for p in (source / split).iterdir() if p.is_dir())
                  for split in SPLITS if (source / split).is_dir()}
    missing = [split for split in SPLITS if split not in categories]
    if missing:
        raise FileNotFoundError(f"{source} has no {'/'.join(missing)} folder; is it clothing-dataset-small?")
    if len({tuple(c) for c in categories.values()}) != 1:
        raise ValueError(f"the splits of {source} have different categories: {categories}")

    # Choose everything first, so too small a folder stops the run before anything is written.
    chosen: dict[tuple[str, str], list[str]] = {}
    for split in SPLITS:
        for category in categories[split]:
            folder = source / split / category
            files = [p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            chosen[split, category] = choose(files, counts[split], seed, split, category)

    out.mkdir(parents=True, exist_ok=True)
    photos: list[SampledPhoto] = []
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp_name:
        tmp = Path(tmp_name)
        for (split, category), names in chosen.items():
            for name in names:
                data, source_size, size = shrink(source / split / category / name, short_side)
                target = tmp / split / category / (Path(name).stem + ".jpg")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                photos.append(SampledPhoto(split, category, target.name, f"{split}/{category}/{name}",
                                           source_size, size, len(data)))
        for split in SPLITS:
            if (out / split).exists():
                shutil.rmtree(out / split)
            (tmp / split).rename(out / split)
    with open(out / "sources.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["split", "category", "file", "source", "source_width", "source_height", "width", "height"])
        for p in photos:
            writer.writerow([p.split, p.category, p.file, p.source, *p.source_size, *p.size])
    return photos


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE,
                        help=f"clothing-dataset-small folder (default {DEFAULT_SOURCE})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"sample folder (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-per-category", type=int, default=22)
    parser.add_argument("--test-per-category", type=int, default=8)
    parser.add_argument("--short-side", type=int, default=256)
    args = parser.parse_args(argv)

    source = args.source.expanduser().resolve()
    if not source.is_dir():
        print(f"make_clothing_sample: error: source folder {source} does not exist; pass --source with the "
              "clothing-dataset-small folder (the one holding train/ and test/)", file=sys.stderr)
        return 2
    counts = {"train": args.train_per_category, "test": args.test_per_category}
    if min(counts.values()) < 1 or args.short_side < 1:
        parser.error("the per-category counts and --short-side must be at least 1")
    try:
        photos = build_sample(source, args.out.expanduser().resolve(), counts, args.seed, args.short_side)
    except (FileNotFoundError, ValueError) as exc:
        print(f"make_clothing_sample: error: {exc}", file=sys.stderr)
        return 1
    total = sum(p.n_bytes for p in photos)
    print(f"wrote {len(photos)} photos ({total / 1e6:.2f} MB) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
