"""One line instead of a traceback when the interpreter lacks the project's packages.

Every entry point (the programs, ``scripts/*.py``, ``python -m paper_exchange``,
``python -m trading.embedded_postgres``) imports this module before anything installed, so
``python3 order_monitor.py`` outside the virtual environment says what to do::

    /usr/bin/python3 lacks the project's packages (dotenv, psycopg2, ...): run make install,
    then: .venv/bin/python order_monitor.py          (one line on the terminal)

Only the standard library is used here, and only whether the packages can be found is checked
(no import): a few file-system look-ups.
"""

from __future__ import annotations

import importlib.util
import sys

#: Import names of the packages every entry point needs (requirements.txt).
REQUIRED = ("dotenv", "psycopg2", "alpaca", "apscheduler", "requests", "holidays", "apprise")


def missing_packages() -> list[str]:
    """The required packages this interpreter cannot find."""
    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def advice(missing: list[str]) -> str:
    """The one line printed for ``missing``: what lacks, and the command to run instead."""
    given = list(getattr(sys, "orig_argv", sys.argv))
    # The command as typed, less the interpreter and its own options (-S, -u, ...).
    start = next((i for i, arg in enumerate(given) if i and (arg == "-m" or arg == sys.argv[0])), 1)
    again = " ".join(given[start:]) or "order_executor.py --help"
    return (f"{sys.executable} lacks the project's packages ({', '.join(missing)}): "
            f"run make install, then: .venv/bin/python {again}")


_missing = missing_packages()
if _missing:
    print(advice(_missing), file=sys.stderr)
    raise SystemExit(2)
