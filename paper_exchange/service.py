"""Run the paper exchange as a background service that outlives the programs using it.

``ensure_running(state_dir)`` returns the URL of a healthy exchange on the port, starting
``python -m paper_exchange --port PORT --state-file STATE_DIR/state.json`` as a detached
process when none answers (new session, output in ``STATE_DIR/exchange.log``, pid in
``STATE_DIR/exchange.pid``). A file lock makes concurrent callers start only one.
``stop(state_dir)`` ends it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

DEFAULT_PORT = 8765
SERVICE_NAME = "paper_exchange"
PACKAGE_PARENT = Path(__file__).resolve().parent.parent


def _paths(state_dir: Path) -> dict[str, Path]:
    return {
        "state": state_dir / "state.json",
        "log": state_dir / "exchange.log",
        "pid": state_dir / "exchange.pid",
        "lock": state_dir / "exchange.lock",
    }


def is_healthy(url: str, timeout: float = 1.0) -> bool:
    """True when a paper exchange answers ``GET /admin/health`` at ``url``."""
    try:
        with urllib.request.urlopen(url + "/admin/health", timeout=timeout) as response:  # noqa: S310
            body = json.loads(response.read() or b"{}")
    except (OSError, ValueError, urllib.error.URLError):
        return False
    return isinstance(body, dict) and body.get("service") == SERVICE_NAME


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_running(
    state_dir: Path,
    port: int = DEFAULT_PORT,
    *,
    host: str = "127.0.0.1",
    timeout: float = 20.0,
    extra_args: Sequence[str] = (),
) -> str:
    """Return the URL of a healthy exchange on ``port``, starting one if needed.

    ``extra_args`` are passed to ``python -m paper_exchange`` when a process is started
    (for example ``["--simulated-clock", "--start-time", "2026-11-20T14:30:00Z"]``).
    Raises RuntimeError (with the end of the log) when the process does not come up.
    """
    state_dir = Path(state_dir)
    url = f"http://{host}:{port}"
    if is_healthy(url):
        return url
    paths = _paths(state_dir)
    with _locked(paths["lock"]):
        if is_healthy(url):  # another caller started it while we waited for the lock
            return url
        command = [
            sys.executable, "-m", "paper_exchange",
            "--host", host, "--port", str(port),
            "--state-file", str(paths["state"]),
            "--pid-file", str(paths["pid"]),
            *extra_args,
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), env.get("PYTHONPATH")]))
        with paths["log"].open("ab") as log_file:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the caller's terminal and signals
                cwd=str(PACKAGE_PARENT),
                env=env,
            )
        paths["pid"].write_text(f"{process.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if is_healthy(url, timeout=0.5):
                return url
            if process.poll() is not None:
                break
            time.sleep(0.05)
        if process.poll() is None:
            process.terminate()
        raise RuntimeError(
            f"the paper exchange did not start on {url}; end of {paths['log']}:\n{_tail(paths['log'])}"
        )


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _is_exchange_process(pid: int) -> bool:
    """True when ``pid`` is alive (not a zombie) and runs the paper exchange."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            status = (proc / "status").read_text()
            if "\nState:\tZ" in status:
                return False
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            return b"paper_exchange" in cmdline
        except OSError:
            return False
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop(state_dir: Path, timeout: float = 10.0) -> bool:
    """Stop the exchange started for ``state_dir``; True if a running process was stopped."""
    paths = _paths(Path(state_dir))
    pid = _read_pid(paths["pid"])
    if pid is None or not _is_exchange_process(pid):
        with contextlib.suppress(OSError):
            paths["pid"].unlink()
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not _is_exchange_process(pid):
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        _reap(pid)
    with contextlib.suppress(OSError):
        paths["pid"].unlink()
    return True


def status(state_dir: Path, port: int = DEFAULT_PORT, host: str = "127.0.0.1") -> dict[str, Any]:
    """``{"running", "pid", "url", "healthy"}`` for the exchange of ``state_dir``."""
    paths = _paths(Path(state_dir))
    pid = _read_pid(paths["pid"])
    running = pid is not None and _is_exchange_process(pid)
    url = f"http://{host}:{port}"
    return {
        "running": running,
        "pid": pid if running else None,
        "url": url,
        "healthy": is_healthy(url),
        "state_file": str(paths["state"]),
        "log_file": str(paths["log"]),
    }
