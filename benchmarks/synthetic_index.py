"""An index folder at catalogue scale that ``clothsim serve`` opens, for load tests beyond the photos at hand.

Writes ``--rows`` clustered unit vectors (``index_scale.py``'s seeded mixture, shaped like image features)
into a feature store stamped with the shipped encoder's spec, so the folder is a real index: ``clothsim
serve`` opens it, searches by id, and encodes uploads with that encoder (their neighbours are synthetic
rows, which is all a load test needs). Each row's record names a real photo of ``--photos`` (cycled within
its category), so item images and categories are real. Then builds ``--backend``::

    .venv/bin/python benchmarks/synthetic_index.py --rows 1000000 --out /tmp/bench-1m \\
        --photos ../shared/data/clothing-dataset-small/train --backend faiss-hnsw --backend-option efConstruction=40
    .venv/bin/python benchmarks/load_test.py --index /tmp/bench-1m --mode id --clients 1,8,32

Prints the time each step took and the folder's size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from index_scale import Mixture  # noqa: E402  (the benchmarks folder is not a package)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the index folder to create")
    parser.add_argument("--photos", type=Path, required=True, help="a folder of photos in one folder per category")
    parser.add_argument("--backend", default="exact")
    parser.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument("--chunk", type=int, default=65536, help="rows per segment (default 65536)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from clothsim.data.folder import read_folder_catalog
    from clothsim.data.records import CatalogRecord
    from clothsim.encoders import create_encoder
    from clothsim.features.model_files import keep_model_file
    from clothsim.features.store import FeatureStore
    from clothsim.index import build_index
    from clothsim.index.base import parse_option_pairs

    if args.out.exists():
        parser.error(f"{args.out} exists; give a new folder")
    encoder = create_encoder("efficientnet_lite0")
    photos: dict[str, list[str]] = {}
    for record in read_folder_catalog(args.photos):
        photos.setdefault(record.category, []).append(record.path)
    names = sorted(photos)
    mix = Mixture(dim=encoder.dim, clusters=max(10, args.rows // 1000), seed=args.seed, categories=len(names))

    started = time.perf_counter()
    args.out.mkdir(parents=True)
    store = FeatureStore.create(args.out, encoder.fingerprint(), dtype=args.dtype,
                                extra={"encoder_spec": keep_model_file(args.out, encoder.spec).to_dict(),
                                       "use_bbox": False})
    for start in range(0, args.rows, args.chunk):
        n = min(args.chunk, args.rows - start)
        vectors, cluster = mix.points(start, n)
        records = []
        for i, c in enumerate(cluster):
            category = names[int(c) % len(names)]
            records.append(CatalogRecord(photos[category][(start + i) % len(photos[category])], category))
        store.append(vectors.astype(args.dtype), records, sources=[None] * n)
        print(f"store: {start + n:,} / {args.rows:,} rows ({time.perf_counter() - started:.0f} s)", file=sys.stderr,
              flush=True)
    store_s = time.perf_counter() - started
    started = time.perf_counter()
    build_index(FeatureStore.open(args.out, verify=False), args.backend, **parse_option_pairs(args.backend_option))
    build_s = time.perf_counter() - started
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file()) / 2**30
    print(f"{args.rows:,} rows of {encoder.dim}-d {args.dtype} into {args.out}: store {store_s:.0f} s, "
          f"{args.backend} built in {build_s:.0f} s, {size:.1f} GiB on disk")
    return 0


if __name__ == "__main__":
    sys.exit(main())
