"""A checksum per stored vector row, so that a search can check the rows it returns without reading the rest.

A store too big to hash whole at every open (over :data:`~clothsim.features.store.AUTO_VERIFY_BYTES`)
still never serves a damaged row: each segment's ``NNNNNN.rowsums.npy`` holds one XXH3-64 checksum of
each row's bytes, in row order (itself checked by SHA-256 against the manifest when loaded, 8 bytes a
row), and :meth:`FeatureStore.check_rows` hashes just the rows of a search's hits against it (about a
microsecond a row of 1280 float32). A checksum per row rather than per block of rows: a hit then costs
one row's bytes, not a block's, and rows swapped with each other are told apart by position.
"""

from __future__ import annotations

import numpy as np

#: What ``rowsums`` files hold: XXH3's 64-bit checksum of each row's stored bytes.
ALGORITHM = "xxh3_64"


def row_checksums(vectors: np.ndarray) -> np.ndarray:
    """One ``uint64`` checksum per row of ``vectors`` (a 2-D array as stored: its dtype's bytes)."""
    import xxhash

    hash_row = xxhash.xxh3_64_intdigest
    out = np.empty(vectors.shape[0], dtype=np.uint64)
    for lo in range(0, vectors.shape[0], 65536):  # bounded memory over a memory-mapped segment
        block = np.ascontiguousarray(vectors[lo : lo + 65536])
        out[lo : lo + block.shape[0]] = [hash_row(row) for row in block]
    return out


def mismatched_rows(vectors: np.ndarray, rows: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Which of ``rows`` (local row numbers of ``vectors``) do not match their checksum in ``expected``."""
    import xxhash

    hash_row = xxhash.xxh3_64_intdigest
    found = np.fromiter((hash_row(np.ascontiguousarray(vectors[int(r)])) for r in rows), dtype=np.uint64,
                        count=len(rows))
    return np.asarray(rows)[found != expected[rows]]
