"""trading/preflight.py: every entry point, run by an interpreter without the packages, prints
one line saying to run make install and use .venv/bin/python, and no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trading import preflight

ROOT = Path(__file__).resolve().parent.parent
ENTRY_POINTS = [
    ["order_executor.py"], ["order_monitor.py"], ["position_monitor.py"], ["scheduler.py", "--list"],
    *[[f"scripts/{path.name}"] for path in sorted((ROOT / "scripts").glob("*.py"))],
    ["-m", "paper_exchange", "--port", "0"], ["-m", "trading.embedded_postgres", "status"],
]


@pytest.mark.parametrize("command", ENTRY_POINTS, ids=" ".join)
def test_entry_point_without_the_packages_prints_one_line_naming_make_install(command):
    # -S: no site-packages, so none of the project's packages can be found (as with the system python3).
    result = subprocess.run([sys.executable, "-S", *command], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "make install" in lines[0] and f".venv/bin/python {' '.join(command)}" in lines[0]
    assert "dotenv" in lines[0]


def test_with_the_packages_nothing_is_missing():
    assert preflight.missing_packages() == []
