"""A duplicate search written out: ``groups.csv`` (one row per member) and ``index.html``, a contact
sheet of the largest groups with their scores.

The folder is built beside its destination and swapped in whole at the end, so an interrupted run leaves
the previous report (or none), never half of one; a partial folder a kill left is removed by the next run.
"""

from __future__ import annotations

import csv
import html
import os
from pathlib import Path
from typing import TYPE_CHECKING

from clothsim.fileio import fsync_dir, remove_path

if TYPE_CHECKING:
    from clothsim.duplicates.finder import DuplicateReport

#: Groups drawn in the contact sheet (the CSV lists them all).
SHEET_GROUPS = 50
THUMB = 160


def write_report(report: "DuplicateReport", out_dir: str | Path, sheet_groups: int = SHEET_GROUPS) -> Path:
    """Write ``groups.csv`` and ``index.html`` (with ``thumbs/``) into ``out_dir``, replacing what it held."""
    out = Path(out_dir)
    partial = out.with_name(f".{out.name}.partial")
    if partial.exists():
        remove_path(partial)
    partial.mkdir(parents=True)
    _write_csv(report, partial / "groups.csv")
    _write_sheet(report, partial, sheet_groups)
    fsync_dir(partial)
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(partial, out)
        remove_path(old)
    else:
        os.replace(partial, out)
    fsync_dir(out.parent)
    return out


def _write_csv(report: "DuplicateReport", path: Path) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "size", "representative", "id", "path", "score", "exact"])
        for number, group in enumerate(report.groups, start=1):
            for item, score in zip(group.members, group.scores):
                writer.writerow([number, len(group), group.representative, item, report.paths.get(item, ""),
                                 f"{score:.6f}", int(group.exact)])
        handle.flush()
        os.fsync(handle.fileno())


def _thumbnail(path: str | None, target: Path) -> bool:
    from clothsim.images import UNUSABLE_IMAGE_ERRORS, load_image

    if not path:
        return False
    try:
        image = load_image(path, min_side=THUMB)
    except UNUSABLE_IMAGE_ERRORS:
        return False
    image.thumbnail((THUMB, THUMB))
    image.save(target, format="JPEG", quality=85)
    return True


def _write_sheet(report: "DuplicateReport", folder: Path, sheet_groups: int) -> None:
    thumbs = folder / "thumbs"
    thumbs.mkdir()
    rows = []
    for number, group in enumerate(report.groups[:sheet_groups], start=1):
        cells = []
        for item, score in zip(group.members, group.scores):
            name = f"{item}.jpg"
            path = report.paths.get(item)
            picture = (f'<img src="thumbs/{name}" alt="item {item}">' if _thumbnail(path, thumbs / name)
                       else '<div class="missing">not readable</div>')
            role = "representative" if item == group.representative else f"{score:.3f}"
            cells.append(f'<figure>{picture}<figcaption>#{item} &middot; {role}<br>'
                         f'<span class="path">{html.escape(Path(path or "").name)}</span></figcaption></figure>')
        kind = " (identical files)" if group.exact else ""
        rows.append(f'<section><h2>Group {number}: {len(group)} items{kind}</h2>{"".join(cells)}</section>')
    shown = min(sheet_groups, len(report.groups))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Near-duplicates</title>
<style>
body {{ font-family: sans-serif; margin: 1.5rem; color: #222; }}
section {{ margin-bottom: 1.5rem; }} h2 {{ font-size: 1rem; margin: 0 0 .4rem; }}
figure {{ display: inline-block; margin: 0 .5rem .5rem 0; width: {THUMB}px; vertical-align: top; }}
img {{ max-width: {THUMB}px; max-height: {THUMB}px; display: block; }}
figcaption {{ font-size: .8rem; }} .path {{ color: #666; word-break: break-all; }}
.missing {{ width: {THUMB}px; height: {THUMB // 2}px; background: #eee; font-size: .8rem; }}
</style></head><body>
<h1>Near-duplicates</h1>
<p>{len(report.groups)} groups among {report.n_items} items at cosine &ge; {report.threshold:.3f}
({html.escape(report.threshold_source)}); the {shown} largest are shown, every group is in
<a href="groups.csv">groups.csv</a>. Scores are each member's cosine to the group's representative.</p>
{"".join(rows)}
</body></html>
"""
    (folder / "index.html").write_text(page, encoding="utf-8")
