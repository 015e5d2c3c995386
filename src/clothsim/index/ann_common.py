"""The names backend plug-ins imported from here before they found homes of their own; kept so that a
plug-in written against this module still loads.

New code imports from where each name lives: the contract every backend and its callers share
(errors, options, the backend folder) from :mod:`clothsim.index.base`; the commit record, saved-file
checks and an open backend's bookkeeping from :mod:`clothsim.index.ann_state`; masks, the exact
fallback and checked hits from :mod:`clothsim.index.ann_search`.
"""

from __future__ import annotations

from clothsim.index.ann_search import (
    APPROXIMATE_SCORE_LIMIT,
    EXACT_BELOW,
    SCORE_AGREEMENT,
    StoreView,
    check_queries,
    checked_hits,
    complete_rows,
    exact_hits,
    exact_rows,
    finish_rows,
    id_bitmap,
    iter_live_blocks,
    rescore_exactly,
    rows_as_arrays,
    to_hits,
)
from clothsim.index.ann_state import (
    CHECK_AT_OPEN_BYTES,
    STATE_FILE,
    STATE_FORMAT,
    FileCheck,
    Progress,
    ReadWriteLock,
    SavedFile,
    coverage,
    file_record,
    is_behind,
    quiet_faiss_loader,
    read_state,
    record_file,
    saved_file_problem,
    saved_files_problems,
    store_identity,
    write_state,
)
from clothsim.index.base import (
    BackendIndexError,
    BackendUnavailable,
    OptionSpec,
    SearchHit,
    backend_dir,
    check_build_options_match,
    check_positive,
    coerce_options,
    parse_option_pairs,
    rebuild_hint,
    with_defaults,
)

__all__ = [
    "APPROXIMATE_SCORE_LIMIT", "CHECK_AT_OPEN_BYTES", "EXACT_BELOW", "SCORE_AGREEMENT", "STATE_FILE",
    "STATE_FORMAT", "BackendIndexError", "BackendUnavailable", "FileCheck", "OptionSpec", "Progress",
    "ReadWriteLock", "SavedFile", "SearchHit", "StoreView", "backend_dir", "check_build_options_match",
    "check_positive", "check_queries", "checked_hits", "coerce_options", "complete_rows", "coverage",
    "exact_hits", "exact_rows", "file_record", "finish_rows", "id_bitmap", "is_behind", "iter_live_blocks",
    "parse_option_pairs", "quiet_faiss_loader", "read_state", "rebuild_hint", "record_file", "rescore_exactly",
    "rows_as_arrays", "saved_file_problem", "saved_files_problems", "store_identity", "to_hits",
    "with_defaults", "write_state",
]
