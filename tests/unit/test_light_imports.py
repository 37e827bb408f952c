"""The receiver listens before the models load, and operator commands answer fast: neither may import torch.

Checked in a fresh interpreter, since this test process has long imported torch for other tests.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import REPO


@pytest.mark.parametrize(
    "module", ["predictd.daemon.app", "predictd.daemon.cli", "predictd.daemon.receive", "predictd.daemon.queue"]
)
def test_service_modules_import_no_torch(module: str) -> None:
    probe = f"import sys, {module}; print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"{module} imports {done.stdout.strip()}"
