"""Reading a store's catalogue metadata: the Parquet files of format 2 and 3 (read a row group at a time
for a search's hits, every page checked against its CRC) and the JSON-lines files of format 1."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from clothsim.data.records import CatalogRecord
from clothsim.features.store.format import (
    NO_CATEGORY,
    Segment,
    StoredItem,
    StoreIntegrityError,
    _metadata_schema,
    _record_columns,
    _row_to_record,
    _table_rows,
)
from clothsim.fileio import read_jsonl


class MetadataMixin:
    """The metadata half of :class:`~clothsim.features.store.reader.StoreReader`: records, categories and
    source signatures, read lazily and cached per segment (the reader owns the caches)."""

    root: Path
    _manifest: dict[str, Any]
    _tables: dict[str, Any]
    _category_columns: dict[str, Any]
    _row_groups: dict[tuple[str, int], Any]
    _group_starts: dict[str, np.ndarray]
    _table: Any
    _codes: tuple[np.ndarray, list[str]] | None

    def metadata_table(self) -> Any:
        """Every row's metadata (deleted ones included) as one pyarrow Table, in :meth:`all_ids` order."""
        if self._table is None:
            import pyarrow as pa

            tables = [self._segment_table(self._segment(seg)) for seg in self._manifest["segments"]]
            self._table = pa.concat_tables(tables) if tables else _metadata_schema().empty_table()
        return self._table

    def _segment_table(self, segment: Segment) -> Any:
        cached = self._tables.get(segment.name)
        if cached is not None:
            return cached
        import pyarrow.parquet as pq

        path = segment.metadata_path

        def read() -> Any:
            if self.is_legacy:
                records = [CatalogRecord.from_dict(r) for r in read_jsonl(path)]
                return _record_columns(records, [None] * len(records))
            # ParquetFile, not read_table: the latter goes through pyarrow.dataset, whose import alone
            # costs more than a whole search.
            return pq.ParquetFile(path, page_checksum_verification=True).read().cast(_metadata_schema())

        table = self._checked_metadata(segment, read)
        if table.column("path").null_count:
            raise StoreIntegrityError(path, "has rows without a path", self.root)
        self._tables[segment.name] = table
        return table

    def category_codes(self) -> tuple[np.ndarray, list[str]]:
        """``(codes, categories)``: for every row of :meth:`all_ids` (deleted included) the index of its
        category in the sorted ``categories`` list, as int32, and :data:`NO_CATEGORY` for a row without
        one (a catalogue without categories). What backends filter and count with."""
        if self._codes is None:
            import pyarrow as pa
            import pyarrow.compute as pc

            chunks = [self._segment_categories(self._segment(seg)) for seg in self._manifest["segments"]]
            column = pa.chunked_array(chunks, type=pa.string())
            categories = sorted(str(v) for v in pc.unique(column).to_pylist() if v is not None)
            codes = pc.fill_null(pc.index_in(column, value_set=pa.array(categories, type=column.type)), NO_CATEGORY)
            array = codes.to_numpy(zero_copy_only=False).astype(np.int32) if len(column) else np.zeros(0, np.int32)
            array.flags.writeable = False
            self._codes = (array, categories)
        codes, names = self._codes
        return codes, list(names)

    def records_for(self, ids: Sequence[int] | np.ndarray) -> list[CatalogRecord]:
        """The records of live ``ids``, in the order given (for the hits a search returns).

        Raises:
            KeyError: an id is unknown or deleted.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            return []
        positions = self._positions(ids)
        dead = ~self.live_mask()[positions]
        if dead.any():
            raise KeyError(f"no item with id {int(ids[dead][0])} in {self.root}")
        seg_of = np.searchsorted(self._offsets, positions, side="right") - 1
        records: list[CatalogRecord | None] = [None] * ids.size
        segments = self.segments
        for seg in np.unique(seg_of):
            where = np.flatnonzero(seg_of == seg)
            rows = self._segment_rows(segments[seg], positions[where] - self._offsets[seg])
            for w, row in zip(where, rows):
                records[w] = _row_to_record(row)
        return records  # type: ignore[return-value]

    def _segment_categories(self, segment: Segment) -> Any:
        """One segment's category column alone (what filters and counts need), read once."""
        cached = self._category_columns.get(segment.name)
        if cached is None:
            table = self._tables.get(segment.name)
            if table is None and not self.is_legacy:
                table = self._read_parquet(segment, columns=["category"])
            elif table is None:
                table = self._segment_table(segment)
            cached = table.column("category").combine_chunks()
            self._category_columns[segment.name] = cached
        return cached

    def _segment_rows(self, segment: Segment, local: np.ndarray) -> list[dict[str, Any]]:
        """Rows ``local`` of one segment as dicts, reading only the row groups that hold them."""
        table = self._tables.get(segment.name)
        if table is not None or self.is_legacy:
            return _table_rows(table if table is not None else self._segment_table(segment), local)
        starts = self._row_group_starts(segment)
        groups = np.searchsorted(starts, local, side="right") - 1
        out: list[dict[str, Any] | None] = [None] * local.size
        for g in np.unique(groups):
            key = (segment.name, int(g))
            part = self._row_groups.get(key)
            if part is None:
                part = self._read_parquet(segment, row_group=int(g))
                self._row_groups[key] = part
            where = np.flatnonzero(groups == g)
            for w, row in zip(where, _table_rows(part, local[where] - starts[g])):
                out[w] = row
        return out  # type: ignore[return-value]

    def _row_group_starts(self, segment: Segment) -> np.ndarray:
        """First row of each row group of a segment's Parquet file (and its end), read once per segment."""
        cached = self._group_starts.get(segment.name)
        if cached is not None:
            return cached
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            meta = pq.ParquetFile(segment.metadata_path).metadata
            sizes = np.array([meta.row_group(g).num_rows for g in range(meta.num_row_groups)], dtype=np.int64)
        except (OSError, pa.ArrowException) as exc:
            raise StoreIntegrityError(segment.metadata_path, f"cannot be read as metadata ({type(exc).__name__}: "
                                      f"{str(exc)[:200]})", self.root) from None
        if int(sizes.sum()) != segment.rows:
            raise StoreIntegrityError(segment.metadata_path, f"has {int(sizes.sum())} metadata rows, the manifest "
                                      f"says {segment.rows}", self.root)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        self._group_starts[segment.name] = starts
        return starts

    def _read_parquet(self, segment: Segment, columns: list[str] | None = None, row_group: int | None = None) -> Any:
        import pyarrow.parquet as pq

        path = segment.metadata_path
        if row_group is not None:
            def read_group() -> Any:
                group = pq.ParquetFile(path, page_checksum_verification=True).read_row_group(row_group, columns=columns)
                return group.cast(_metadata_schema()) if columns is None else group

            # One row group of a segment: its row count is the group's, not the manifest's.
            return self._checked_metadata(segment, read_group, whole=False)
        table = self._checked_metadata(
            segment, lambda: pq.ParquetFile(path, page_checksum_verification=True).read(columns=columns))
        if "path" in table.column_names and table.column("path").null_count:
            raise StoreIntegrityError(path, "has rows without a path", self.root)
        return table

    def _checked_metadata(self, segment: Segment, read: Callable[[], Any], whole: bool = True) -> Any:
        """``read()`` of a segment's metadata, any failure (and, for the whole segment, a row count other
        than the manifest's) raised as :class:`StoreIntegrityError` naming the file."""
        import pyarrow as pa

        path = segment.metadata_path
        try:
            table = read()
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:
            raise StoreIntegrityError(path, f"cannot be read as metadata ({type(exc).__name__}: "
                                            f"{str(exc)[:200]})", self.root) from None
        if whole and table.num_rows != segment.rows:
            raise StoreIntegrityError(path, f"has {table.num_rows} metadata rows, the manifest says {segment.rows}",
                                      self.root)
        return table

    def items(self) -> list[StoredItem]:
        """Every stored record with its id, deleted ones included, in id order (builds Python objects for
        every row: for small stores and tests; use the columnar accessors elsewhere)."""
        rows = self.metadata_table().to_pylist()
        return [StoredItem(int(i), _row_to_record(r)) for i, r in zip(self.all_ids(), rows)]

    def load_vectors(self) -> tuple[np.ndarray, list[StoredItem]]:
        """All live vectors (float32, in memory) and their items, for evaluation and training."""
        blocks, ids = [], []
        for block_ids, block in self.iter_blocks():
            blocks.append(np.asarray(block, dtype=np.float32))
            ids.append(block_ids)
        vectors = np.concatenate(blocks) if blocks else np.zeros((0, self.dim), dtype=np.float32)
        all_ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        records = self.records_for(all_ids)
        return vectors, [StoredItem(int(i), r) for i, r in zip(all_ids, records)]

    def source_signatures(self) -> tuple[np.ndarray, np.ndarray]:
        """``(size, mtime_ns)`` of every row's source file when it was encoded (-1 where unknown)."""
        table = self.metadata_table()
        size = table.column("source_size").fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        mtime = table.column("source_mtime_ns").fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        return size, mtime

