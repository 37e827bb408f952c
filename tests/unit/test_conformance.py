"""The DICOM Conformance Statement in docs/ is exactly what daemon/conformance.py renders from the code, so a change to
a SOP class, transfer syntax, status or default cannot leave it behind; and rendering it imports no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from predictd.daemon import conformance
from predictd.daemon.receive import ERROR_COMMENTS, IMAGE_SOP_CLASSES, accepted_transfer_syntaxes
from tests.support import REPO

STATEMENT = REPO / "docs" / "conformance-statement.md"


@pytest.fixture(scope="module")
def rendered() -> str:
    return conformance.render()


def test_committed_statement_is_current(rendered: str) -> None:
    committed = STATEMENT.read_text(encoding="utf-8") if STATEMENT.is_file() else ""
    assert rendered == committed, (
        f"docs/conformance-statement.md is out of date; regenerate it from the repository root with\n"
        f"    {conformance.REGENERATE}\nand commit the result"
    )


def test_render_is_deterministic(rendered: str) -> None:
    assert conformance.render() == rendered


def test_every_image_sop_class_and_transfer_syntax_is_listed(rendered: str) -> None:
    missing = [uid for uid in [*IMAGE_SOP_CLASSES, *accepted_transfer_syntaxes()] if f"`{uid}`" not in rendered]
    assert not missing, f"not in the conformance statement: {missing}"


def test_every_error_comment_is_listed(rendered: str) -> None:
    for status, comment in ERROR_COMMENTS.items():
        assert f"`0x{status:04X}`" in rendered
        assert comment in rendered


def test_rendering_imports_no_torch() -> None:
    probe = "import sys, predictd.daemon.conformance; print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"predictd.daemon.conformance imports {done.stdout.strip()}"
