"""Writing a comparison out: ``report.md``, ``report.json`` and a self-contained ``report.html``."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from clothsim.evaluation.results import Comparison
from clothsim.fileio import atomic_path, write_json

RECALL_COLUMNS = (1, 10)


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table (one row per evaluated encoder)."""
    ks = comparison.settings.get("ks", [1, 5, 10])
    header = ["encoder", "dim", *[f"P@{k}" for k in ks], f"mAP@{comparison.settings.get('map_k', 10)}"]
    if comparison.has_recall:
        header += [f"R@{k}" for k in RECALL_COLUMNS]
    with_instance = any(r.instance is not None for r in comparison.results)
    if with_instance:
        header.append("instance R@1")
    with_labels = any(r.labels is not None for r in comparison.results)
    if with_labels:
        header.append("label accuracy")
    header.append("images/s")
    rows = []
    for r in comparison.results:
        row = [r.label, str(r.dim), *[_number(r.report.precision.get(k)) for k in ks], _number(r.report.map_at_k)]
        if comparison.has_recall:
            recall = r.report.recall_at_k or {}
            row += [_number(recall.get(k)) for k in RECALL_COLUMNS]
        if with_instance:
            row.append(_number(r.instance.recall_at_1) if r.instance is not None else "n/a")
        if with_labels:
            row.append(_number(r.labels.accuracy) if r.labels is not None else "n/a")
        row.append(_number(r.images_per_second, 1))
        rows.append(row)
    return header, rows


def backend_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the index-backend table (one row per encoder and backend; empty if none)."""
    ks = comparison.settings.get("ks", [1, 5, 10])
    header = ["encoder", "backend", "options", *[f"P@{k}" for k in ks], f"mAP@{comparison.settings.get('map_k', 10)}",
              "recall@10 vs exact", "build s", "ms/query"]
    rows = []
    for r in comparison.results:
        for b in r.backends:
            options = ", ".join(f"{k}={v}" for k, v in sorted(b.options.items())) or "defaults"
            rows.append([r.label, b.backend, options, *[_number(b.precision.get(k)) for k in ks],
                         _number(b.map_at_k), _number(b.recall_at_10), _number(b.build_s, 2),
                         _number(b.ms_per_query, 2)])
    return header, rows


def _backend_markdown(comparison: Comparison) -> list[str]:
    header, rows = backend_rows(comparison)
    if not rows:
        return []
    return ["## Index backends", "",
            "Each backend built over the gallery and searched with the same queries; recall@10 is the share "
            "of the exact top 10 it finds (1.000: the same neighbours as exact search).", "",
            "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *["| " + " | ".join(row) + " |" for row in rows], ""]


def _labels_markdown(comparison: Comparison) -> list[str]:
    """What the label accuracy column means, and why an encoder has none."""
    scored = [r for r in comparison.results if r.labels is not None]
    if not scored:
        return []
    first = scored[0].labels
    lines = [f"Label accuracy: each query photo labelled with the closest of {len(first.labels)} texts "
             f"(\"{first.prompt}\" for each of {', '.join(first.labels)}) by the encoder's text tower; the share "
             "whose label is its category."]
    lines += [f"- {r.label}: no label accuracy ({r.labels.reason})" for r in scored if r.labels.reason]
    return lines + [""]


def render_markdown(comparison: Comparison) -> str:
    """The report as Markdown: the table, notes, skipped encoders and links to the charts."""
    header, rows = table_rows(comparison)
    lines = [f"# Encoder comparison: {comparison.data}", "",
             f"Protocol: {comparison.protocol}; precision counts same-category neighbours "
             f"(chance P@k = {comparison.results[0].report.chance_precision:.3f})." if comparison.results
             else f"Protocol: {comparison.protocol}.", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines.append("")
    guarded = [r.instance for r in comparison.results if r.instance is not None]
    if guarded:
        counts = sorted({g.n_queries for g in guarded})
        shown = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        lines += [f"Instance R@1: each of {shown} gallery photos, altered (a crop keeping 80-100% "
                  "of it, slight colour jitter, JPEG quality 70), queried against the gallery; the share that "
                  f"finds its original first (seed {guarded[0].seed}).", ""]
    lines += _labels_markdown(comparison)
    for s in comparison.skipped:
        lines.append(f"- **{s.name}** skipped: {s.reason}")
    if comparison.skipped:
        lines.append("")
    for r in comparison.results:
        note = f"- {r.label}: throughput {r.throughput_source}"
        if r.n_failed:
            note += f"; {r.n_failed} undecodable image(s) left out"
        if r.details.get("parts"):
            weights = ", ".join(f"{p}={w:.2f}" for p, w in zip(r.details["parts"], r.details["part_weights"]))
            note += f"; {r.details['method']} of {weights} ({r.details.get('weights_chosen_by')})"
        lines.append(note)
    lines.append("")
    lines += _backend_markdown(comparison)
    for key, path in comparison.figures.items():
        lines += [f"![{key}]({path})", ""]
    for label, path in comparison.confusions.items():
        lines += [f"![{label} confusion]({path})", ""]
    for label, path in comparison.grids.items():
        lines += [f"![{label} results]({path})", ""]
    return "\n".join(lines)


def _image(out_dir: Path, relative_path: str, alt: str) -> str:
    data = base64.b64encode((out_dir / relative_path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1300px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f0f0f0}td.best{font-weight:bold;background:#e6f4ea}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.5em 0}.skipped{color:#8a4b00}
section{margin-bottom:2em}.pair{display:flex;flex-wrap:wrap;gap:1em}.pair figure{margin:0}
"""


def render_html(comparison: Comparison, out_dir: str | Path) -> str:
    """The report as one HTML page with every chart embedded (base64 PNG), so it can be mailed as is."""
    out_dir = Path(out_dir)
    esc = html.escape
    header, rows = table_rows(comparison)
    best: dict[int, float] = {}
    for col in range(2, len(header)):
        values = [float(row[col]) for row in rows if row[col] != "n/a"]
        if values:
            best[col] = max(values)
    body = [f"<h1>Encoder comparison: {esc(comparison.data)}</h1>", f"<p>Protocol: {esc(comparison.protocol)}.</p>",
            "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = []
        for col, value in enumerate(row):
            mark = ' class="best"' if col in best and value != "n/a" and float(value) == best[col] else ""
            cells.append(f"<td{mark}>{esc(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    body.append("</table>")
    b_header, b_rows = backend_rows(comparison)
    if b_rows:
        body.append("<h2>Index backends (recall@10 against exact search)</h2><table><tr>"
                    + "".join(f"<th>{esc(h)}</th>" for h in b_header) + "</tr>")
        body += ["<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in b_rows]
        body.append("</table>")
    for r in comparison.results:
        body.append(f"<p><b>{esc(r.label)}</b>: throughput {esc(r.throughput_source)}"
                    + (f"; parts {esc(', '.join(r.details['parts']))} with weights "
                       f"{esc(', '.join(f'{w:.2f}' for w in r.details['part_weights']))} "
                       f"({esc(str(r.details.get('weights_chosen_by')))})" if r.details.get("parts") else "")
                    + "</p>")
    if comparison.skipped:
        body.append("<h2>Skipped encoders</h2><ul>")
        body += [f'<li class="skipped"><b>{esc(s.name)}</b>: {esc(s.reason)}</li>' for s in comparison.skipped]
        body.append("</ul>")
    titles = {"precision": "Precision@k", "category_heatmap": "Per-category precision",
              "tsne": "Embedding maps (t-SNE)", "category_distribution": "The data: images per category"}
    for key in ("precision", "category_heatmap", "tsne", "category_distribution"):
        if key in comparison.figures:
            body.append(f"<section><h2>{titles[key]}</h2>{_image(out_dir, comparison.figures[key], key)}</section>")
    if comparison.confusions:
        body.append('<section><h2>Top-1 confusion</h2><div class="pair">')
        body += [f"<figure>{_image(out_dir, p, label + ' confusion')}</figure>" for label, p in comparison.confusions.items()]
        body.append("</div></section>")
    if comparison.grids:
        body.append("<section><h2>Results for the same queries (green frame: same category, red: other)</h2>")
        body += [f"<h3>{esc(label)}</h3>{_image(out_dir, p, label + ' results')}" for label, p in comparison.grids.items()]
        body.append("</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>clothsim: encoder comparison</title><style>{_STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_report(comparison: Comparison, out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.md``, ``report.json`` and ``report.html`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    paths = {"md": out_dir / "report.md", "json": out_dir / "report.json", "html": out_dir / "report.html"}
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(render_markdown(comparison), encoding="utf-8")
    write_json(paths["json"], json.loads(json.dumps(comparison.to_dict(), default=float)))
    with atomic_path(paths["html"]) as tmp:
        tmp.write_text(render_html(comparison, out_dir), encoding="utf-8")
    return paths
