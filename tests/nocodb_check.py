"""The optional real-NocoDB check (``make nocodb-test``; not part of ``make test``).

Runs NocoDB 0.262.5 (installed by the Makefile into ``var/nocodb``) against a throwaway
PostgreSQL holding the project's schema, connected the way docs/database-setup.md says people
connect it (the ``trading_viewer`` role), and checks what the issue found broken:

1. NocoDB finds the primary key of every table (the documented REFERENCES grant);
2. ``scripts/setup_nocodb.py`` sets precision, single-selects and time formats, a second run
   does nothing, and no PostgreSQL column type, default or CHECK changed;
3. "Approve" ticked through NocoDB's REST API is accepted and audited; ``executed`` changed
   through NocoDB is refused;
4. the executor (as ``trading_app``) and the order monitor place and record the trade, and the
   trade read back through NocoDB has the exact numbers.

Prints one line per check and exits 0 when all pass, 1 otherwise.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trading.preflight  # noqa: F401, E402  (first: one line, not a traceback, outside .venv)

# isort: split

import requests  # noqa: E402

import order_executor  # noqa: E402
import order_monitor  # noqa: E402
from alpaca_client import AlpacaBroker  # noqa: E402
from config import PostgresConfig, Secret, parse_database_url  # noqa: E402
from db_layer import TradingDB  # noqa: E402
from paper_exchange import PaperExchange  # noqa: E402
from paper_exchange.ratelimit import UNTHROTTLED_REQUESTS_PER_MINUTE  # noqa: E402
from paper_exchange.server import start_server  # noqa: E402
from scripts import setup_nocodb  # noqa: E402
from tests.factories import FRIDAY_0945, ExchangeAdmin, add_decision, make_settings  # noqa: E402
from tests.pg_server import RootSafePostgresql  # noqa: E402
from tests.test_database_roles import documented_role_statements  # noqa: E402
from trading import schema  # noqa: E402

NOCODB_DIR = ROOT / "var" / "nocodb"
CATALOG = ("SELECT table_name, column_name, data_type, column_default, is_nullable FROM information_schema.columns "
           "WHERE table_schema = 'public' ORDER BY 1, 2")
CHECKS = "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint WHERE contype = 'c' ORDER BY 1"


class Check:
    """Counts and prints the checks."""

    def __init__(self) -> None:
        self.failed = 0
        self.passed = 0

    def __call__(self, ok: bool, what: str, detail: Any = "") -> bool:
        print(f"{'ok  ' if ok else 'FAIL'} {what}{'' if ok or detail == '' else f': {detail}'}", flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        return ok


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_nocodb(port: int, workdir: Path) -> subprocess.Popen:
    env = dict(os.environ, PORT=str(port), NC_DISABLE_TELE="true", NC_AUTH_JWT_SECRET="nocodb-check-only",
               NODE_PATH=str(NOCODB_DIR / "node_modules"))
    log = (workdir / "nocodb.log").open("w")
    process = subprocess.Popen(["node", str(ROOT / "scripts" / "nocodb" / "start.js")], cwd=workdir, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"NocoDB exited ({process.returncode}); see {workdir / 'nocodb.log'}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).ok:
                return process
        except requests.RequestException:
            pass
        time.sleep(1)
    process.kill()
    raise RuntimeError(f"NocoDB did not answer within 180 s; see {workdir / 'nocodb.log'}")


class Noco:
    """A NocoDB session: the first user (super admin) and an API token."""

    def __init__(self, url: str) -> None:
        self.url = url
        auth = requests.post(f"{url}/api/v1/auth/user/signup", timeout=30,
                             json={"email": "ops@example.com", "password": "nocodb-check-Passw0rd"})
        auth.raise_for_status()
        token = requests.post(f"{url}/api/v1/tokens", json={"description": "nocodb_check"}, timeout=30,
                              headers={"xc-auth": auth.json()["token"]})
        token.raise_for_status()
        self.token = token.json()["token"]

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> requests.Response:
        return requests.request(method, self.url + path, json=body, params=params or None, timeout=60,
                                headers={"xc-token": self.token})


def wait_for_base(noco: Noco, base_id: str) -> dict[str, dict[str, Any]]:
    """The base's tables with their columns, once NocoDB's background sync of the source has
    finished (two reads 2 s apart agree): changing column meta during the sync is lost."""
    previous: Any = None
    for _ in range(90):
        listed = noco.call("GET", f"/api/v2/meta/bases/{base_id}/tables").json()["list"]
        tables = {t["table_name"]: noco.call("GET", f"/api/v2/meta/tables/{t['id']}").json() for t in listed}
        state = {name: sorted((c["id"], c["updated_at"]) for c in t["columns"]) for name, t in tables.items()}
        if set(tables) >= set(schema.TABLES_BY_NAME) and state == previous:
            return tables
        previous = state
        time.sleep(2)
    raise RuntimeError(f"NocoDB did not finish reading the tables of base {base_id}")


def run(check: Check) -> None:
    pg = RootSafePostgresql()
    exchange_handle = start_server(exchange=PaperExchange(seed=7, simulated_clock=True, start_time=FRIDAY_0945,
                                                          price_simulation=False),
                                   rate_limit=UNTHROTTLED_REQUESTS_PER_MINUTE)
    workdir = Path(tempfile.mkdtemp(prefix="nocodb-check-", dir=NOCODB_DIR))
    nocodb = None
    try:
        owner_cfg = parse_database_url(pg.url(), "TEST_DATABASE_URL")
        owner = TradingDB(test_mode=True, config=owner_cfg)
        owner.connect()
        owner.create_schema()
        for statement in documented_role_statements(owner_cfg.dbname, suffix=""):
            owner.execute_update(statement)
        catalog_before = owner.execute_query(CATALOG), owner.execute_query(CHECKS)

        port = int(os.environ.get("NOCODB_PORT") or free_port())
        started = time.monotonic()
        nocodb = start_nocodb(port, workdir)
        check(True, f"NocoDB started on port {port} in {time.monotonic() - started:.0f} s")
        noco = Noco(f"http://127.0.0.1:{port}")
        base = noco.call("POST", "/api/v2/meta/bases", {"title": "trading"}).json()
        def connection(user: str, password: str) -> dict[str, Any]:
            return {"client": "pg", "searchPath": ["public"], "connection": {
                "host": owner_cfg.host, "port": owner_cfg.port, "database": owner_cfg.dbname,
                "user": user, "password": password}}

        source = noco.call("POST", f"/api/v2/meta/bases/{base['id']}/sources", {
            "alias": "trading_pg", "type": "pg", "inflection_column": "none", "inflection_table": "none",
            "config": connection("trading_viewer", "change-me-too")})
        check(source.ok, "NocoDB connected to the database as the documented trading_viewer role", source.text)
        tables = wait_for_base(noco, base["id"])
        check(set(tables) >= set(schema.TABLES_BY_NAME), "NocoDB lists every table of the schema", sorted(tables))
        no_pk = [name for name in schema.TABLES_BY_NAME
                 if [c["column_name"] for c in tables.get(name, {}).get("columns", []) if c.get("pk")] != ["id"]]
        check(not no_pk, "NocoDB found primary key id on every table", no_pk)

        # setup_nocodb.py as viewer (the columns with a default are refused: NocoDB re-sets the
        # default, owner only), once more with the base connected as the owner, then as viewer again.
        first = setup_nocodb.main(["--url", noco.url, "--token", noco.token])
        left = setup_nocodb.plan_changes(setup_nocodb.NocoDB(noco.url, noco.token))
        refused = {"trading.trade_journal.status", "trading.order_execution.order_status",
                   "trading.program_run.outcome"}
        check(first == 1 and {f"{t}.{c}" for t, c, _, _ in left} == refused,
            "setup_nocodb.py as trading_viewer sets all but the single-selects of columns with a default",
            [f"{t}.{c}" for t, c, _, _ in left])
        owner_base = noco.call("POST", "/api/v2/meta/bases", {"title": "trading_owner"}).json()
        as_owner = noco.call("POST", f"/api/v2/meta/bases/{owner_base['id']}/sources", {
            "alias": "trading_pg_owner", "type": "pg", "inflection_column": "none", "inflection_table": "none",
            "config": connection(owner_cfg.user, "owner")})
        owner_tables = {name: t["id"] for name, t in wait_for_base(noco, owner_base["id"]).items()}
        second = setup_nocodb.main(["--url", noco.url, "--token", noco.token])
        left = setup_nocodb.plan_changes(setup_nocodb.NocoDB(noco.url, noco.token))
        check(as_owner.ok and second == 1 and {f"{t}.{c}" for t, c, _, _ in left} == refused,
              "a base connected as the owner gets everything; the viewer's base keeps only those three as text",
              [f"{t}.{c}" for t, c, _, _ in left])
        trade_table = noco.call("GET", f"/api/v2/meta/tables/{owner_tables['trade_journal']}").json()
        shown = {c["column_name"]: c for c in trade_table["columns"]}
        check(shown["planned_entry"]["meta"].get("precision") == 4 and shown["actual_pnl"]["meta"].get("precision") == 2
              and shown["planned_qty"]["meta"].get("precision") == 0 and shown["status"]["uidt"] == "SingleSelect"
              and shown["entry_date"]["meta"].get("time_format") == "HH:mm:ss",
              "NocoDB now shows prices at 4, money at 2, quantities at 0, status as a single-select, seconds")
        check((owner.execute_query(CATALOG), owner.execute_query(CHECKS)) == catalog_before,
              "no PostgreSQL column type, default, nullability or CHECK changed")

        # Approve through NocoDB's REST API; executed refused.
        decision_id = add_decision(owner, "AAPL", approve=False, planned_entry="150.25", planned_sl="145.10",
                                   planned_tp="160.40", planned_qty=10)
        decisions = tables["analysis_decision"]["id"]
        approve = noco.call("PATCH", f"/api/v2/tables/{decisions}/records", [{"id": decision_id, "Approve": True}])
        check(approve.ok, "ticking Approve through NocoDB's REST API is accepted", approve.text[:200])
        audited = owner.execute_query("SELECT program, new_value FROM audit_event WHERE event = 'OUTSIDE_UPDATE' "
                                      "AND entity_id = %s", (decision_id,))
        check(audited == [{"program": "outside:trading_viewer", "new_value": '{"Approve": true}'}],
              "the approval is in audit_event with who made it", audited)
        executed = noco.call("PATCH", f"/api/v2/tables/{decisions}/records", [{"id": decision_id, "executed": True}])
        row = owner.get_by_id("analysis_decision", decision_id)
        check(not executed.ok and row["executed"] is False,
              "changing executed through NocoDB is refused (permission denied)", executed.text[:200])

        # The programs, as the documented trading_app role.
        app_cfg = PostgresConfig(host=owner_cfg.host, port=owner_cfg.port, dbname=owner_cfg.dbname,
                                 user="trading_app", password=Secret("change-me"), source="DATABASE_URL")
        admin = ExchangeAdmin(exchange_handle.url)
        admin.quotes(AAPL=("150.20", "150.22"))
        broker = AlpacaBroker(base_url=exchange_handle.url, data_url=exchange_handle.url, timeout=5)
        settings = make_settings()
        with TradingDB(config=app_cfg, application_name="order_executor") as app:
            app.ensure_schema()
            summary = order_executor.run_once(app, broker, settings=settings)
            check(summary.outcome == "success", "order_executor placed the approved decision", summary.as_dict())
            admin.clock(advance_seconds=60)
            admin.quotes(AAPL=("150.20", "150.22"))
            order_monitor.run_once(app, broker, settings=settings, sleep=lambda _s: None)

        # Read the trade back through NocoDB.
        records = noco.call("GET", f"/api/v2/tables/{tables['trade_journal']['id']}/records",
                            where=f"(initial_analysis_id,eq,{decision_id})").json()["list"]
        trade = records[0] if records else {}
        wanted = {"planned_entry": "150.25", "planned_sl": "145.10", "planned_tp": "160.40", "planned_qty": "10"}
        got = {key: trade.get(key) for key in wanted}
        check(len(records) == 1 and all(Decimal(str(got[k])) == Decimal(v) for k, v in wanted.items()),
              "the trade read back through NocoDB has the planned numbers exactly", got)
        stored = owner.query("trade_journal", {"initial_analysis_id": decision_id})[0]
        check(trade.get("status") == stored["status"] and stored["status"] == "POSITION"
              and Decimal(str(trade.get("actual_entry"))) == stored["actual_entry"],
              "NocoDB shows the filled trade as PostgreSQL has it (POSITION, actual entry)",
              {"nocodb": (trade.get("status"), trade.get("actual_entry")),
               "postgres": (stored["status"], stored["actual_entry"])})
        outside = owner.execute_query("SELECT count(*) AS n FROM audit_event WHERE event LIKE 'OUTSIDE_%%'")
        check(outside == [{"n": 1}], "the programs' own writes were not audited as outside changes", outside)
        owner.close()
    finally:
        if nocodb is not None:
            nocodb.terminate()
            try:
                nocodb.wait(timeout=20)
            except subprocess.TimeoutExpired:
                nocodb.kill()
        exchange_handle.stop()
        pg.stop()
        if check.failed == 0:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"NocoDB's log and meta data kept in {workdir}")


def main() -> int:
    if not (NOCODB_DIR / "node_modules" / "nocodb").is_dir():
        print("NocoDB is not installed: run make nocodb-test (it installs NocoDB into var/nocodb)")
        return 2
    check = Check()
    started = time.monotonic()
    try:
        run(check)
    except Exception as exc:  # a harness: report what broke as a failed check, not a traceback
        check(False, "the check could not finish", f"{type(exc).__name__}: {exc}")
    print(f"{check.passed} passed, {check.failed} failed in {time.monotonic() - started:.0f} s")
    return 0 if check.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
