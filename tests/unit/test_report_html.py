"""models.report_html: a well-formed, self-contained page that shows every figure of the report, escaped."""

from __future__ import annotations

import copy
import math
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from predictd.models import metrics as m
from predictd.models.report_html import render_html, write_html

LABELS = ["none", "<b>&x", "plate"]
VOID = {"meta", "br", "hr", "img", "input", "link", "wbr"}


class Page(HTMLParser):
    """Parses a page, failing on any misnested or unclosed tag; keeps tags, table rows and per-SVG elements."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.starts: list[tuple[str, dict[str, str | None]]] = []
        self.rows: list[list[str]] = []
        self.svgs: list[list[list[Any]]] = []  # per svg: [tag, attrs, text] of its elements
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self._open_elems: list[list[Any] | None] = []  # parallel to stack: the svg element each open tag is
        self.feed(html)
        self.close()
        assert not self.stack, f"unclosed tags {self.stack}"

    def _open(self, tag: str, attrs: list[tuple[str, str | None]]) -> list[Any] | None:
        a = dict(attrs)
        self.starts.append((tag, a))
        elem = None
        if tag == "svg":
            self.svgs.append([])
        elif "svg" in self.stack:
            elem = [tag, a, ""]
            self.svgs[-1].append(elem)
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self._cell = []
        return elem

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        elem = self._open(tag, attrs)
        if tag not in VOID:
            self.stack.append(tag)
            self._open_elems.append(elem)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._open(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()
        self._open_elems.pop()
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._open_elems and self._open_elems[-1] is not None:
            self._open_elems[-1][2] += data

    def tags(self, name: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.starts if t == name]

    def row(self, head: str) -> list[str]:
        found = [r[1:] for r in self.rows if r and r[0] == head]
        assert len(found) == 1, f"{len(found)} rows headed {head!r}"
        return found[0]

    def svg(self, title: str) -> list[list[Any]]:
        found = [s for s in self.svgs if any(e[0] == "title" and e[2] == title for e in s[:1])]
        assert len(found) == 1, f"{len(found)} svgs titled {title!r}"
        return found[0]


def _data(y: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return m.softmax(rng.normal(size=(y.size, len(LABELS))) + 1.5 * np.eye(len(LABELS))[y])


def _roc(y: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c, label in enumerate(LABELS):
        fpr, tpr, _ = m.roc_curve(y == c, probs[:, c])
        out[label] = {
            k: [float(v) if math.isfinite(v) else None for v in arr] for k, arr in (("fpr", fpr), ("tpr", tpr))
        }
    return out


def _ci(entry: dict[str, Any]) -> str:
    lo, hi = entry["ci"]
    return f"{entry['value']:.3f} ({lo:.3f}–{hi:.3f})"


@pytest.fixture(scope="module")
def base() -> tuple[dict[str, Any], dict[str, Any]]:
    """(bare evaluate output, full report with every optional key) on 30 fixed cases of 3 classes."""
    y = np.arange(30) % 3
    probs = _data(y)
    bare = m.evaluate(y, probs, LABELS, n_boot=200)
    pred = [LABELS[i] for i in probs.argmax(axis=1)]
    rng = np.random.default_rng(1)
    readers = {
        name: [LABELS[int(t)] if rng.random() < 0.8 else LABELS[(int(t) + 1) % 3] for t in y]
        for name in ("A", "B", "Dr <i>")
    }
    full = copy.deepcopy(bare)
    full.update(
        model={
            "name": "hip_hardware <script>",
            "version": "1.2.0",
            "arch": "resnet50",
            "task": "hip",
            "input_size": 384,
        },
        data={"manifest": "manifests/site.csv", "split": "test", "sha256": "ab" * 32},
        temperature=1.234,
        calibration={"temperature": 1.234, "fitted_on": "val", "ece_before": 0.12, "ece_after": 0.045},
        roc=_roc(y, probs),
        readers=m.reader_study(readers, pred, LABELS),
        created="2024-05-01T12:00:00+00:00",
        warnings=["test split has 30 images: wide CIs"],
    )
    return bare, full


def test_full_report_is_well_formed_and_shows_every_figure(base: tuple[dict[str, Any], dict[str, Any]]) -> None:
    _, report = base
    page = Page(render_html(report))
    assert len(page.tags("svg")) == 3
    assert page.row("Accuracy") == [_ci(report["accuracy"])]
    assert page.row("Cohen's kappa") == [_ci(report["kappa"])]
    assert page.row("Macro F1") == [_ci(report["macro_f1"])]
    assert page.row("Log loss") == [f"{report['log_loss']:.3f}"]
    assert page.row("ECE (top label)") == [f"{report['ece']:.3f}"]
    assert page.row("Cases (n)") == ["30"]
    text = "".join(page.text)
    for label in LABELS:
        c = report["per_class"][label]
        assert page.row(label) == [str(c["support"])] + [_ci(c[k]) for k in ("precision", "recall", "f1", "auc")]
        assert f"{label} (AUC {c['auc']['value']:.3f})" in text
    assert "hip_hardware <script> 1.2.0 — evaluation" in text
    assert "1.234" in text and "0.120" in text and "0.045" in text and "val split" in text
    assert "test split has 30 images: wide CIs" in text
    assert "measured on the test split of manifests/site.csv only (n = 30)" in text


def test_plots_carry_the_numbers(base: tuple[dict[str, Any], dict[str, Any]]) -> None:
    _, report = base
    page = Page(render_html(report))
    confusion = page.svg("Confusion matrix")
    counts = [e[2] for e in confusion if e[0] == "text" and e[2].isdigit()]
    assert counts == [str(c) for row in report["confusion_matrix"] for c in row]
    assert sum(e[0] == "rect" for e in confusion) == len(LABELS) ** 2
    shown = {e[2] for e in confusion if e[0] == "text"} | {e[2] for e in confusion if e[0] == "title"}
    assert {"Predicted", "True", *LABELS} <= shown

    roc = page.svg("ROC curves, one-vs-rest")
    assert sum(e[0] == "polyline" for e in roc) == len(LABELS)
    assert any(e[0] == "line" and e[1].get("stroke-dasharray") for e in roc)  # the chance diagonal

    reliability = page.svg("Reliability diagram")
    filled = [r for r in report["reliability"] if r["count"]]
    bars = [e for e in reliability if e[0] == "rect" and e[1].get("fill") != "none"]
    assert len(bars) == len(filled)
    bar_counts = [e[2] for e in reliability if e[0] == "text" and e[1].get("font-size") == "9"]
    assert bar_counts == [str(r["count"]) for r in filled]
    assert any(e[0] == "line" and e[1].get("stroke-dasharray") for e in reliability)


def test_reader_table(base: tuple[dict[str, Any], dict[str, Any]]) -> None:
    _, report = base
    study = report["readers"]
    page = Page(render_html(report))
    for name, r in study["leave_one_out"].items():
        cells = page.row(name)
        assert cells[:2] == [str(r["n"]), str(r["n_ties"])]
        assert cells[2] == f"{r['reader']['accuracy']:.3f}"
        assert cells[5] == f"{r['model']['kappa']:.3f}"
    assert page.row("mean")[2] == f"{study['mean']['reader']['accuracy']:.3f}"


def test_no_external_references(base: tuple[dict[str, Any], dict[str, Any]]) -> None:
    _, report = base
    html = render_html(report)
    page = Page(html)
    for tag, attrs in page.starts:
        assert tag not in {"script", "link", "img", "iframe", "object", "embed"}
        assert "src" not in attrs
        assert (attrs.get("href") or "#").startswith("#")
    assert "http" not in html and "url(" not in html and "@import" not in html


def test_strings_from_the_report_are_escaped(base: tuple[dict[str, Any], dict[str, Any]]) -> None:
    _, report = base
    html = render_html(report)
    assert "<b>&x" not in html and "&lt;b&gt;&amp;x" in html
    assert "Dr <i>" not in html and "Dr &lt;i&gt;" in html
    assert "<script" not in html
    page = Page(html)
    assert not {"b", "i", "script"} & {t for t, _ in page.starts}
    assert "Dr <i>" in "".join(page.text)


def test_bare_evaluate_output_renders(base: tuple[dict[str, Any], dict[str, Any]]) -> None:
    bare, _ = base
    html = render_html(bare)
    page = Page(html)
    assert len(page.tags("svg")) == 2  # no ROC without "roc"
    assert page.row("Accuracy") == [_ci(bare["accuracy"])]
    assert "Model evaluation" in html and "Readers" not in html and "Calibration" not in html
    assert "measured on the evaluated cases only (n = 30)" in "".join(page.text)
    assert render_html(bare) == html  # deterministic


def test_undefined_values_render_as_not_available() -> None:
    y = np.arange(30) % 2  # the third class never occurs: its AUC and recall are undefined
    probs = _data(y, seed=3)
    report = m.evaluate(y, probs, LABELS, n_boot=50)
    assert report["per_class"]["plate"]["auc"]["value"] is None
    report.update(
        kappa={"value": None, "ci": [None, None]},
        log_loss=None,
        ece=float("nan"),
        roc=_roc(y, probs),
        calibration={"temperature": None, "ece_before": None, "ece_after": 0.05},
        readers=None,
        model=None,
        data={"split": "test"},
    )
    assert report["roc"]["plate"]["tpr"][-1] is None
    page = Page(render_html(report))
    assert page.row("plate")[-1] == "n/a"
    assert page.row("Cohen's kappa") == ["n/a"]
    assert page.row("Log loss") == ["n/a"] and page.row("ECE (top label)") == ["n/a"]
    roc = page.svg("ROC curves, one-vs-rest")
    assert sum(e[0] == "polyline" for e in roc) == 2
    assert "plate (AUC n/a)" in "".join(page.text)


def test_write_html(base: tuple[dict[str, Any], dict[str, Any]], tmp_path: Path) -> None:
    _, report = base
    target = tmp_path / "out" / "eval" / "report.html"
    assert write_html(report, target) == target
    assert target.read_text(encoding="utf-8") == render_html(report)
