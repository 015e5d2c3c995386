"""Near-duplicates across a whole index: exact copies, groups of near-copies that never chain unrelated
items, a threshold calibrated on the catalogue's own photos, searches that collapse copies, and new
photos checked against the catalogue. Names are resolved on first use."""

from __future__ import annotations

from clothsim._lazy import lazy_getattr

_EXPORTS = {
    "DuplicateGroup": "clothsim.duplicates.grouping",
    "DuplicateReport": "clothsim.duplicates.finder",
    "find_duplicates": "clothsim.duplicates.finder",
    "calibrate": "clothsim.duplicates.calibration",
    "check_photos": "clothsim.duplicates.collapse",
    "collapsed_search": "clothsim.duplicates.collapse",
    "write_report": "clothsim.duplicates.report",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
