"""Build src/clothsim/assets/fashion_mnist_sample/sample.npz from the Debian Fashion-MNIST files.

Run once (the output is committed): ``python scripts/make_demo_sample.py [--root DIR] [--seed 0]``.
40 training images per class become the demo catalogue and 10 test images per class its queries.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from clothsim.data.fashion_mnist import DEMO_SAMPLE_PATH, FASHION_MNIST_CLASSES, load_fashion_mnist


def choose(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices: ``per_class`` rows of each class, class by class, ascending within a class."""
    rows = [
        np.sort(rng.choice(np.flatnonzero(labels == label), per_class, replace=False))
        for label in range(len(FASHION_MNIST_CLASSES))
    ]
    return np.concatenate(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default=None, help="folder with the idx files (default: Debian path)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-per-class", type=int, default=40)
    parser.add_argument("--test-per-class", type=int, default=10)
    parser.add_argument("--out", type=Path, default=DEMO_SAMPLE_PATH)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    images, labels, splits, sources = [], [], [], []
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        data = load_fashion_mnist(split, args.root)
        rows = choose(data.labels, per_class, rng)
        images.append(data.images[rows])
        labels.append(data.labels[rows].astype(np.uint8))
        splits.append(np.full(rows.size, split, dtype="<U5"))
        sources.append(rows.astype(np.int32))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        images=np.concatenate(images),
        labels=np.concatenate(labels),
        splits=np.concatenate(splits),
        source_index=np.concatenate(sources),
        class_names=np.array(FASHION_MNIST_CLASSES),
    )
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {sum(map(len, labels))} images)")


if __name__ == "__main__":
    main()
