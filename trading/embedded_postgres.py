"""The embedded PostgreSQL cluster: a local server the project starts itself under ``var/``.

With no database configured, the programs use a cluster whose data lives in
``var/postgres/`` of the checkout, listening on 127.0.0.1 only. It is started on first use,
reused while it runs, kept across restarts and stopped with one command::

    .venv/bin/python -m trading.embedded_postgres stop      # or: make db-stop

PostgreSQL's ``initdb`` and ``postgres`` refuse to run as root. When this process is root,
the server programs run as the unprivileged ``postgres`` user through
``setpriv --reuid=postgres --regid=postgres --init-groups``, which replaces the process, so
signals reach the server itself; that user owns the data directory.

The cluster trusts connections from 127.0.0.1 (no password): it is a development and demo
database. Production uses ``DATABASE_URL``.
"""

from __future__ import annotations

import trading.preflight  # noqa: F401  (first: one line, not a traceback, outside .venv)

# isort: split

import argparse
import contextlib
import fcntl
import glob
import hashlib
import logging
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from trading.errors import ConfigurationError

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = PROJECT_ROOT / "var" / "postgres"
SERVER_USER = "postgres"

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found. Install them: "
    "Debian/Ubuntu `sudo apt-get install postgresql`, Fedora `sudo dnf install postgresql-server`, "
    "macOS `brew install postgresql@15`; or set PG_BIN to the directory holding initdb."
)


def find_pg_bin() -> Path:
    """The directory of the PostgreSQL server programs (newest version when several exist)."""
    configured = os.environ.get("PG_BIN")
    if configured:
        # An explicit choice is honoured or refused, never silently replaced by another version.
        chosen = Path(configured)
        if all((chosen / name).exists() for name in ("initdb", "pg_ctl", "postgres")):
            return chosen
        raise ConfigurationError(f"PG_BIN={configured} does not hold initdb, pg_ctl and postgres. " + INSTALL_HINT)
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0:
                candidates.append(Path(out.stdout.strip()))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)

    def version_key(path: str) -> tuple[int, ...]:
        digits = "".join(ch if ch.isdigit() else " " for ch in path).split()
        return tuple(int(d) for d in digits)

    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/opt/homebrew/opt/postgresql@*/bin",
                    "/usr/local/opt/postgresql@*/bin", "/usr/local/pgsql/bin"):
        candidates.extend(Path(p) for p in sorted(glob.glob(pattern), key=version_key, reverse=True))
    for candidate in candidates:
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists() and (candidate / "postgres").exists():
            return candidate
    raise ConfigurationError(INSTALL_HINT)


def running_as_root() -> bool:
    """True when server programs must be handed to the unprivileged ``postgres`` user."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def server_user_ids() -> tuple[int, int]:
    """The uid and gid of the ``postgres`` user, with a clear error if it does not exist."""
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise ConfigurationError(
            "running as root, PostgreSQL needs an unprivileged 'postgres' user to run the server; "
            "install the postgresql package (it creates the user) or run as a normal user") from None
    return entry.pw_uid, entry.pw_gid


def as_server_user(command: Sequence[str]) -> list[str]:
    """``command`` prefixed so that it runs as the ``postgres`` user when we are root."""
    if not running_as_root():
        return list(command)
    server_user_ids()
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    return [setpriv, f"--reuid={SERVER_USER}", f"--regid={SERVER_USER}", "--init-groups", *command]


def give_to_server_user(path: Path) -> None:
    """Make ``path`` (recursively) owned by the ``postgres`` user when we are root."""
    if not running_as_root():
        return
    uid, gid = server_user_ids()
    os.lchown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        os.chown(root, uid, gid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)


def _reachable_by_server_user(path: Path) -> bool:
    """Whether the ``postgres`` user can traverse every parent of ``path`` (a checkout under
    /root, mode 700, is not)."""
    if not running_as_root():
        return True
    uid, gid = server_user_ids()
    for parent in path.resolve().parents:
        try:
            st = parent.stat()
        except FileNotFoundError:
            continue
        if st.st_uid == uid:
            mode_ok = st.st_mode & 0o100
        elif st.st_gid == gid:
            mode_ok = st.st_mode & 0o010
        else:
            mode_ok = st.st_mode & 0o001
        if not mode_ok:
            return False
    return True


@dataclass(frozen=True)
class ClusterStatus:
    """What ``status`` found."""

    running: bool
    port: int | None
    data_dir: Path


class EmbeddedPostgres:
    """One local cluster: ``root/data`` (the cluster), ``root/run`` (socket), ``root/postgres.log``."""

    def __init__(self, root: Path = DEFAULT_ROOT, port: int = 54329) -> None:
        self.root = Path(root)
        self.port = port

    # -- paths -----------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def _prepare_root(self) -> None:
        """Create the directory tree; as root, place it where the ``postgres`` user can reach it."""
        if self.root.is_symlink() or self.root.exists():
            return
        self.root.parent.mkdir(parents=True, exist_ok=True)
        if not _reachable_by_server_user(self.root.parent):
            # The checkout sits below a directory the postgres user cannot enter (e.g. /root).
            # Keep the data in a reachable place and leave a symlink under var/.
            digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:12]
            target = Path("/var/tmp") / f"trading-monitor-{digest}" / "postgres"
            target.mkdir(parents=True, exist_ok=True)
            os.chmod(target.parent, 0o755)
            self.root.symlink_to(target, target_is_directory=True)
            logger.info("embedded PostgreSQL data placed in %s (linked from %s): the postgres user "
                        "cannot enter the checkout's parent directories", target, self.root)
            return
        self.root.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _start_lock(self) -> Iterator[None]:
        """Serialise start/stop between processes (two programs starting at once start one server)."""
        lock_path = self.root.parent / ".postgres.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- state -----------------------------------------------------------------------------

    def status(self) -> ClusterStatus:
        """Whether the cluster runs, from its ``postmaster.pid`` and a signal-0 probe."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return ClusterStatus(False, None, self.data_dir)
        try:
            pid = int(lines[0])
            port = int(lines[3]) if len(lines) > 3 else None
        except (ValueError, IndexError):
            return ClusterStatus(False, None, self.data_dir)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return ClusterStatus(False, None, self.data_dir)
        except PermissionError:
            pass  # alive, owned by another user
        return ClusterStatus(True, port, self.data_dir)

    def _run(self, command: Sequence[str], *, as_server: bool, timeout: float = 120) -> subprocess.CompletedProcess:
        full = as_server_user(command) if as_server else list(command)
        env = dict(os.environ, LC_ALL="C", LANG="C")
        env.pop("PGPASSWORD", None)
        return subprocess.run(full, capture_output=True, text=True, timeout=timeout, env=env, cwd="/")

    def _initdb(self, bin_dir: Path) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        give_to_server_user(self.root.resolve())
        result = self._run([str(bin_dir / "initdb"), "-D", str(self.data_dir.resolve()), "-U", "postgres",
                            "--auth-host=trust", "--auth-local=trust", "--encoding=UTF8", "--locale=C",
                            "--no-instructions"], as_server=True)
        if result.returncode != 0:
            detail = result.stderr.strip() or result.stdout.strip()
            raise ConfigurationError(f"initdb failed for {self.data_dir}: {detail}")
        logger.info("embedded PostgreSQL cluster created in %s", self.data_dir)

    def ensure_running(self) -> int:
        """Start the cluster unless it already runs; returns the port it listens on."""
        bin_dir = find_pg_bin()
        self._prepare_root()
        with self._start_lock():
            current = self.status()
            if current.running and current.port:
                return current.port
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb(bin_dir)
            self.socket_dir.mkdir(parents=True, exist_ok=True)
            give_to_server_user(self.socket_dir)
            if not self.log_file.exists():
                self.log_file.touch()
            give_to_server_user(self.log_file)
            options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.socket_dir.resolve()}"
            result = self._run([str(bin_dir / "pg_ctl"), "-D", str(self.data_dir.resolve()), "-l",
                                str(self.log_file.resolve()), "-o", options, "-w", "-t", "60", "start"],
                               as_server=True)
            if result.returncode != 0:
                tail = ""
                with contextlib.suppress(OSError):
                    tail = "\n".join(self.log_file.read_text().splitlines()[-5:])
                raise ConfigurationError(
                    f"embedded PostgreSQL did not start on 127.0.0.1:{self.port} "
                    f"(is another server using the port? set EMBEDDED_PG_PORT): {result.stderr.strip()}\n{tail}")
            logger.info("embedded PostgreSQL started on 127.0.0.1:%s (data %s)", self.port, self.data_dir)
            return self.port

    def ensure_database(self, dbname: str, port: int) -> None:
        """Create ``dbname`` if it does not exist yet (with the server's own client programs)."""
        bin_dir = find_pg_bin()
        base = ["-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
        check = self._run([str(bin_dir / "psql"), *base, "-d", "postgres", "-tAc",
                           f"SELECT 1 FROM pg_database WHERE datname = '{dbname}'"], as_server=False)
        if check.returncode != 0:
            raise ConfigurationError(f"cannot query the embedded PostgreSQL on port {port}: {check.stderr.strip()}")
        if check.stdout.strip() == "1":
            return
        created = self._run([str(bin_dir / "createdb"), *base, dbname], as_server=False)
        if created.returncode != 0 and "already exists" not in created.stderr:
            raise ConfigurationError(f"cannot create database {dbname}: {created.stderr.strip()}")

    def stop(self) -> bool:
        """Stop the cluster (fast shutdown); False if it was not running."""
        if not self.status().running:
            return False
        bin_dir = find_pg_bin()
        with self._start_lock():
            result = self._run([str(bin_dir / "pg_ctl"), "-D", str(self.data_dir.resolve()), "-m", "fast", "-w",
                                "stop"], as_server=True)
        if result.returncode != 0:
            raise ConfigurationError(f"pg_ctl stop failed: {result.stderr.strip()}")
        return True


def ensure_embedded_database(dbname: str, port: int, root: Path = DEFAULT_ROOT) -> None:
    """Start (or reuse) the embedded cluster and make sure ``dbname`` exists."""
    cluster = EmbeddedPostgres(root, port)
    actual_port = cluster.ensure_running()
    if actual_port != port:
        raise ConfigurationError(f"the embedded PostgreSQL in {cluster.data_dir} already runs on port {actual_port}, "
                                 f"but EMBEDDED_PG_PORT asks for {port}: stop it first "
                                 "(make db-stop) or use that port")
    cluster.ensure_database(dbname, port)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trading.embedded_postgres start|stop|status``."""
    from config import DEFAULT_EMBEDDED_PG_PORT, EMBEDDED_DB_NAME, EMBEDDED_TEST_DB_NAME, env_int, load_environment

    load_environment()
    parser = argparse.ArgumentParser(
        prog=".venv/bin/python -m trading.embedded_postgres",
        description="Start, stop or inspect the embedded PostgreSQL cluster kept in var/postgres.")
    parser.add_argument("action", choices=("start", "stop", "status"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    port = env_int(os.environ, "EMBEDDED_PG_PORT", DEFAULT_EMBEDDED_PG_PORT, minimum=1024, maximum=65535)
    cluster = EmbeddedPostgres(DEFAULT_ROOT, port)
    try:
        if args.action == "start":
            for name in (EMBEDDED_DB_NAME, EMBEDDED_TEST_DB_NAME):
                ensure_embedded_database(name, port)
            print(f"running on 127.0.0.1:{port}; connect with: "
                  f"psql -h 127.0.0.1 -p {port} -U postgres {EMBEDDED_DB_NAME}")
        elif args.action == "stop":
            print("stopped" if cluster.stop() else "not running")
        else:
            state = cluster.status()
            print(f"running on 127.0.0.1:{state.port} (data {state.data_dir}); connect with: "
                  f"psql -h 127.0.0.1 -p {state.port} -U postgres {EMBEDDED_DB_NAME}" if state.running
                  else f"not running (data {state.data_dir})")
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
