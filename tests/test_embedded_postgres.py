"""trading.embedded_postgres: a real local cluster started, reused, kept and stopped (also as root)."""

from __future__ import annotations

import os
import shutil
import socket

import pytest

from config import PostgresConfig
from db_layer import TradingDB
from trading.embedded_postgres import EmbeddedPostgres, find_pg_bin, running_as_root
from trading.errors import ConfigurationError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def cluster(tmp_path):
    cluster = EmbeddedPostgres(tmp_path / "var" / "postgres", port=free_port())
    try:
        yield cluster
    finally:
        cluster.stop()
        if cluster.root.is_symlink():  # the root fallback outside the checkout
            shutil.rmtree(cluster.root.resolve().parent, ignore_errors=True)


def test_cluster_starts_keeps_its_data_across_restarts_and_stops(cluster):
    port = cluster.ensure_running()
    assert port == cluster.port and cluster.status().running
    assert cluster.ensure_running() == port  # reused, not started twice
    cluster.ensure_database("demo_db", port)
    cfg = PostgresConfig(host="127.0.0.1", port=port, dbname="demo_db", user="postgres", source="DATABASE_URL")
    with TradingDB(config=cfg) as db:
        db.execute_update("CREATE TABLE kept (v int)")
        db.execute_update("INSERT INTO kept VALUES (42)")
        assert db.execute_one("SHOW listen_addresses")["listen_addresses"] == "127.0.0.1"
    assert cluster.stop() is True and not cluster.status().running
    assert cluster.stop() is False
    cluster.ensure_running()
    cluster.ensure_database("demo_db", port)  # exists already: nothing to do
    with TradingDB(config=cfg) as db:
        assert db.execute_query("SELECT v FROM kept") == [{"v": 42}]


def test_as_root_the_server_runs_as_the_postgres_user(cluster):
    cluster.ensure_running()
    data = cluster.data_dir.resolve()
    if running_as_root():
        import pwd

        assert pwd.getpwuid(os.stat(data).st_uid).pw_name == "postgres"
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        assert pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name == "postgres"
    else:
        assert os.stat(data).st_uid == os.getuid()


def test_a_wrong_pg_bin_names_the_variable_and_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PG_BIN", str(tmp_path))
    with pytest.raises(ConfigurationError, match=r"PG_BIN=.* does not hold initdb") as caught:
        find_pg_bin()
    assert "apt-get install postgresql" in str(caught.value)


def test_a_busy_port_gives_a_clear_error(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        cluster = EmbeddedPostgres(tmp_path / "pg", port=sock.getsockname()[1])
        try:
            with pytest.raises(ConfigurationError, match=r"did not start .* EMBEDDED_PG_PORT"):
                cluster.ensure_running()
        finally:
            cluster.stop()
            if cluster.root.is_symlink():
                shutil.rmtree(cluster.root.resolve().parent, ignore_errors=True)
