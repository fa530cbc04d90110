"""A testing.postgresql server that also works when the tests run as root.

PostgreSQL refuses to run as root, so as root the server programs run as the ``postgres``
user (through the same ``setpriv`` prefix the embedded cluster uses) and that user owns the
throwaway directory.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import testing.postgresql

from trading.embedded_postgres import as_server_user, find_pg_bin, give_to_server_user


class RootSafePostgresql(testing.postgresql.Postgresql):
    """``testing.postgresql.Postgresql`` whose server runs unprivileged when we are root."""

    def initialize(self) -> None:
        bin_dir = find_pg_bin()
        self.settings.setdefault("initdb", None)
        self.settings.setdefault("postgres", None)
        if self.settings["initdb"] is None:
            self.settings["initdb"] = str(bin_dir / "initdb")
        if self.settings["postgres"] is None:
            self.settings["postgres"] = str(bin_dir / "postgres")
        super().initialize()

    def initialize_database(self) -> None:
        data_dir = os.path.join(self.base_dir, "data")
        if os.path.exists(os.path.join(data_dir, "PG_VERSION")):
            return
        os.chmod(self.base_dir, 0o755)
        give_to_server_user(Path(self.base_dir))
        args = as_server_user([self.initdb, "-D", data_dir, "--lc-messages=C", "--no-sync",
                               *self.settings["initdb_args"].split()])
        result = subprocess.run(args, capture_output=True, text=True, cwd="/")
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr.strip()}")

    def get_server_commandline(self) -> list[str]:
        return as_server_user(super().get_server_commandline())
