"""One evaluation report (the dict of :func:`models.metrics.evaluate` plus optional context) as an HTML page for people.

The page is self-contained (inline CSS, plots drawn as inline SVG, no scripts, fonts or links) so that it can be
mailed, archived next to the weights or opened on a reading-room PC without network access. Every string taken from
the report is escaped: labels and reader names come from site data. Sections whose key is missing or ``None`` are
left out, so the bare output of ``evaluate`` renders too.

Why the three plots are drawn by hand (about 95 lines) and not with matplotlib, measured 2026-12-01 with matplotlib
3.11.2 installed beside this venv (``pip install --target``): matplotlib would save perhaps 40 lines, but it adds
about 74 MB to the install on top of numpy and Pillow (matplotlib 35 MB, fontTools 30 MB, kiwisolver 5 MB, ...),
0.7 s to import, and writes a font cache under ``$HOME/.cache/matplotlib`` on first use (a stray file the daemon's
host should not get). Its SVG also embeds glyph outlines unless told not to, which makes the page heavier.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

__all__ = ["render_html", "write_html"]

DASH = "n/a"
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:60em;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,thead th{text-align:left}thead th{background:#f3f3f3}code{font-size:.9em;word-break:break-all}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.4em 1em}svg{display:block;margin:.5em 0}
footer{margin-top:2em;border-top:1px solid #ccc;padding-top:.5em;font-size:.9em;color:#555}
"""


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _num(x: Any, digits: int = 3) -> str:
    """A number with a fixed number of decimals; ``None`` / NaN / inf (undefined metrics) as a dash."""
    if x is None or isinstance(x, bool):
        return DASH
    try:
        f = float(x)
    except (TypeError, ValueError):
        return DASH
    return f"{f:.{digits}f}" if math.isfinite(f) else DASH


def _vci(entry: Any) -> str:
    """``{"value", "ci"}`` as ``0.913 (0.870–0.957)``; the interval is dropped when it is undefined."""
    if not isinstance(entry, dict):
        return _num(entry)
    value = _num(entry.get("value"))
    ci = entry.get("ci") or [None, None]
    lo, hi = _num(ci[0]), _num(ci[1])
    if value == DASH or (lo == DASH and hi == DASH):
        return value
    return f"{value} ({lo}–{hi})"


def _short(label: str, limit: int = 24) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table from already-escaped cells; the first cell of a row is its header."""
    thead = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + f"<th>{row[0]}</th>" + "".join(f"<td>{c}</td>" for c in row[1:]) + "</tr>" for row in rows)
    return f"<table><thead><tr>{thead}</tr></thead><tbody>{body}</tbody></table>"


def _axes(x0: float, y0: float, size: float, xlabel: str, ylabel: str) -> list[str]:
    """Frame, ticks at 0 / 0.5 / 1, axis titles and the dashed diagonal of a unit square plot."""
    out = [f'<rect x="{x0}" y="{y0}" width="{size}" height="{size}" fill="none" stroke="#444"/>']
    for t in (0.0, 0.5, 1.0):
        x, y = x0 + t * size, y0 + (1 - t) * size
        out.append(f'<text x="{x:.1f}" y="{y0 + size + 14:.1f}" text-anchor="middle">{t:g}</text>')
        out.append(f'<text x="{x0 - 5:.1f}" y="{y + 4:.1f}" text-anchor="end">{t:g}</text>')
    out.append(f'<text x="{x0 + size / 2:.1f}" y="{y0 + size + 30:.1f}" text-anchor="middle">{_e(xlabel)}</text>')
    cy = y0 + size / 2
    out.append(
        f'<text x="14" y="{cy:.1f}" text-anchor="middle" transform="rotate(-90 14 {cy:.1f})">{_e(ylabel)}</text>'
    )
    out.append(f'<line x1="{x0}" y1="{y0 + size}" x2="{x0 + size}" y2="{y0}" stroke="#999" stroke-dasharray="4 3"/>')
    return out


def _svg(width: float, height: float, title: str, parts: Sequence[str]) -> str:
    head = f'<svg width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img"'
    return f'{head} font-size="11" font-family="sans-serif"><title>{_e(title)}</title>{"".join(parts)}</svg>'


def _confusion_svg(labels: Sequence[str], cm: Sequence[Sequence[int]]) -> str:
    """Heat map shaded by the fraction of each true class (row), so rare classes read as clearly as common ones."""
    k, cell = len(labels), 44
    lab = min(180, 12 + 7 * max((len(_short(s)) for s in labels), default=1))
    left, top = 24 + lab, 24 + lab
    parts = [f'<text x="{left + k * cell / 2:.1f}" y="14" text-anchor="middle">Predicted</text>']
    parts.append(
        f'<text x="14" y="{top + k * cell / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + k * cell / 2:.1f})">True</text>'
    )
    for i, label in enumerate(labels):
        cx, cy = left + (i + 0.5) * cell, top + (i + 0.5) * cell
        tip = f"<title>{_e(label)}</title>"
        parts.append(f'<text x="{left - 6}" y="{cy + 4:.1f}" text-anchor="end">{tip}{_e(_short(label))}</text>')
        parts.append(
            f'<text x="{cx + 4:.1f}" y="{top - 6}" transform="rotate(-90 {cx + 4:.1f} {top - 6})">'
            f"{tip}{_e(_short(label))}</text>"
        )
    for i, row in enumerate(cm):
        total = sum(int(c) for c in row)
        for j, count in enumerate(row):
            frac = int(count) / total if total else 0.0
            r, g, b = (round(a + (z - a) * frac) for a, z in ((247, 8), (251, 48), (255, 107)))
            x, y = left + j * cell, top + i * cell
            ink = "#fff" if frac > 0.5 else "#222"
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="rgb({r},{g},{b})" stroke="#fff"/>'
            )
            parts.append(
                f'<text x="{x + cell / 2}" y="{y + cell / 2 + 4}" text-anchor="middle" fill="{ink}">{int(count)}</text>'
            )
    return _svg(left + k * cell + 10, top + k * cell + 10, "Confusion matrix", parts)


def _roc_svg(labels: Sequence[str], roc: dict[str, Any], per_class: dict[str, Any]) -> str:
    """One curve per class (points with an undefined rate skipped) and a legend carrying each class's AUC."""
    x0, y0, size = 50.0, 10.0, 300.0
    parts = _axes(x0, y0, size, "False positive rate", "True positive rate")
    for i, label in enumerate(labels):
        color = PALETTE[i % len(PALETTE)]
        curve = roc.get(label) or {}
        pts = [
            f"{x0 + float(f) * size:.1f},{y0 + (1 - float(t)) * size:.1f}"
            for f, t in zip(curve.get("fpr") or [], curve.get("tpr") or [], strict=False)
            if _num(f) != DASH and _num(t) != DASH
        ]
        if len(pts) > 1:
            parts.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{color}" stroke-width="2"/>')
        auc = _num(((per_class.get(label) or {}).get("auc") or {}).get("value"))
        ly = y0 + 10 + 18 * i
        parts.append(f'<line x1="370" y1="{ly}" x2="392" y2="{ly}" stroke="{color}" stroke-width="3"/>')
        parts.append(f'<text x="398" y="{ly + 4}">{_e(_short(label))} (AUC {auc})</text>')
    height = max(y0 + size + 40, y0 + 20 + 18 * len(labels))
    width = 410 + 7 * max((len(_short(s)) + 12 for s in labels), default=12)
    return _svg(width, height, "ROC curves, one-vs-rest", parts)


def _reliability_svg(rows: Sequence[dict[str, Any]]) -> str:
    """Accuracy per confidence bin against the diagonal of perfect calibration, with each bin's case count."""
    x0, y0, size = 50.0, 20.0, 300.0
    parts = _axes(x0, y0, size, "Confidence (top probability)", "Accuracy")
    for row in rows:
        acc, count = row.get("accuracy"), int(row.get("count") or 0)
        if _num(acc) == DASH or not count:
            continue
        x, w = x0 + float(row["lower"]) * size, (float(row["upper"]) - float(row["lower"])) * size
        h = float(row["accuracy"]) * size
        parts.append(
            f'<rect x="{x:.1f}" y="{y0 + size - h:.1f}" width="{w:.1f}" height="{h:.1f}" '
            f'fill="#1f77b4" fill-opacity="0.7" stroke="#fff"/>'
        )
        parts.append(
            f'<text x="{x + w / 2:.1f}" y="{y0 + size - h - 3:.1f}" text-anchor="middle" font-size="9">{count}</text>'
        )
    return _svg(x0 + size + 20, y0 + size + 40, "Reliability diagram", parts)


def _context(report: dict[str, Any]) -> str:
    rows: list[list[str]] = []
    for section in ("model", "data"):
        for key, value in (report.get(section) or {}).items():
            if value is not None:
                cell = f"<code>{_e(value)}</code>" if key == "sha256" else _e(value)
                rows.append([_e(f"{section} {key}".replace("_", " ")), cell])
    if report.get("created"):
        rows.append(["created", _e(report["created"])])
    return _table(["Context", ""], rows) if rows else ""


def _calibration(report: dict[str, Any]) -> str:
    cal = report.get("calibration") or {}
    temperature = cal.get("temperature", report.get("temperature"))
    if not cal and temperature is None:
        return ""
    text = f"Probabilities are softmax(logits / T) with temperature T = {_num(temperature)}"
    if cal.get("fitted_on"):
        text += f", fitted on the {_e(cal['fitted_on'])} split"
    text += "."
    if "ece_before" in cal or "ece_after" in cal:
        text += f" ECE before scaling {_num(cal.get('ece_before'))}, after {_num(cal.get('ece_after'))}."
    return f"<h2>Calibration</h2><p>{text}</p>"


def _readers(study: dict[str, Any]) -> str:
    def ak(d: Any) -> list[str]:
        d = d or {}
        return [_num(d.get("accuracy")), _num(d.get("kappa"))]

    rows = [
        [_e(name), _e(r.get("n")), _e(r.get("n_ties")), *ak(r.get("reader")), *ak(r.get("model"))]
        for name, r in (study.get("leave_one_out") or {}).items()
    ]
    mean = study.get("mean") or {}
    rows.append(["mean", "", "", *ak(mean.get("reader")), *ak(mean.get("model"))])
    head = ["Reader left out", "Cases", "Ties", "Reader accuracy", "Reader kappa", "Model accuracy", "Model kappa"]
    cons = study.get("consensus") or {}
    acc, kappa = ak(cons.get("model"))
    return (
        f"<h2>Readers</h2><p>Gold standard: majority vote of the other readers ({len(study.get('readers') or [])} "
        f"readers, {_e(study.get('n_cases'))} cases). Against the majority of all readers the model has accuracy "
        f"{acc}, kappa {kappa} (n = {_e(cons.get('n'))}, {_e(cons.get('n_ties'))} ties left out).</p>"
        + _table(head, rows)
    )


def _domain(report: dict[str, Any]) -> str:
    """The domain gate: coverage on this split and, when measured, what it refused of the out-of-domain probes."""
    gate, ood = report.get("domain_gate"), report.get("ood")
    if not gate:
        return "<h2>Domain gate</h2><p>This model has no domain gate: it labels every image it is given.</p>"
    parts = [
        "<h2>Domain gate</h2>",
        f"<p>{_e(gate.get('method'))}: {_num(gate.get('coverage'))} of this "
        f"split passes (target {_num(gate.get('coverage_target'), 2)}); accuracy on the images it lets through "
        f"{_num(gate.get('accuracy_assessed'))} (n = {_e(gate.get('n_assessed'))}).</p>",
    ]
    if ood:
        rows = [
            [_e(category), _e(c["n"]), _num(c["refused"] / c["n"] if c["n"] else None)]
            for category, c in sorted(ood.get("by_category", {}).items())
        ]
        by = ", ".join(f"{_e(n)} by {_e(reason)}" for reason, n in ood.get("refused_by", {}).items())
        parts.append(
            f"<p>Out-of-domain probes: {_num(ood.get('refused'))} refused of {_e(ood.get('n'))}"
            f"{f' ({by})' if by else ''}; {_num(ood.get('refused_pixels'))} on the pixels alone (content check or "
            f"gate, as for an image whose modality is mislabelled); "
            f"{_e(ood.get('labelled_confident'))} labelled with probability ≥ 0.9.</p>"
        )
        parts.append(_table(["Probe category", "n", "Refused"], rows))
    return "".join(parts)


def render_html(report: dict[str, Any]) -> str:
    """The whole page as one string (deterministic: the same report gives the same bytes)."""
    model = report.get("model") or {}
    name = " ".join(str(model[k]) for k in ("name", "version") if model.get(k))
    title = f"{name} — evaluation" if name else "Model evaluation"
    labels = [str(s) for s in report.get("labels") or []]
    per_class = report.get("per_class") or {}
    level = f"{round(100 * float(report.get('ci_level') or 0.95)):d}% CI"
    body = [f"<h1>{_e(title)}</h1>", _context(report)]
    if report.get("warnings"):
        body.append('<div class="warn"><ul>' + "".join(f"<li>{_e(w)}</li>" for w in report["warnings"]) + "</ul></div>")
    summary = [
        ["Cases (n)", _e(report.get("n", DASH))],
        ["Accuracy", _vci(report.get("accuracy"))],
        ["Cohen's kappa", _vci(report.get("kappa"))],
        ["Macro F1", _vci(report.get("macro_f1"))],
        ["Log loss", _num(report.get("log_loss"))],
        ["ECE (top label)", _num(report.get("ece"))],
    ]
    body += ["<h2>Summary</h2>", _table(["Metric", f"Value ({level})"], [[_e(a), b] for a, b in summary])]
    if per_class:
        rows = [
            [_e(label), _e((c or {}).get("support", DASH))]
            + [_vci((c or {}).get(m)) for m in ("precision", "recall", "f1", "auc")]
            for label, c in per_class.items()
        ]
        body += [
            f"<h2>Per class (one-vs-rest, {level})</h2>",
            _table(["Class", "Support", "Precision", "Recall", "F1", "AUC"], rows),
        ]
    if report.get("confusion_matrix") is not None and labels:
        body += ["<h2>Confusion matrix</h2>", _confusion_svg(labels, report["confusion_matrix"])]
    if report.get("roc"):
        body += ["<h2>ROC curves</h2>", _roc_svg(labels, report["roc"], per_class)]
    if report.get("reliability"):
        body += ["<h2>Reliability</h2>", _reliability_svg(report["reliability"])]
    body.append(_calibration(report))
    body.append(_domain(report))
    if report.get("readers"):
        body.append(_readers(report["readers"]))
    data = report.get("data") or {}
    where = f"the {_e(data['split'])} split" if data.get("split") else "the evaluated cases"
    if data.get("manifest"):
        where += f" of {_e(data['manifest'])}"
    body.append(
        f"<footer>All figures were measured on {where} only (n = {_e(report.get('n', DASH))}); "
        "they say nothing certain about other sites, scanners or populations.</footer>"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )


def write_html(report: dict[str, Any], path: Path) -> Path:
    """Render ``report`` to ``path`` (UTF-8, parent folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report), encoding="utf-8")
    return path
