"""Configuration: the environment (and `.env`), validated once, with secrets kept out of sight.

Every value has a default that works on a fresh machine (the embedded PostgreSQL and the
local paper exchange). A malformed value raises ``ConfigurationError`` naming the variable
and what was expected. Secrets are wrapped in ``Secret`` so that no repr, log line or
exception can show them. ``.env.example`` documents every variable read here.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from dotenv import load_dotenv

from trading.errors import ConfigurationError

PROJECT_ROOT = Path(__file__).resolve().parent
VAR_DIR = PROJECT_ROOT / "var"

#: The Alpaca endpoints (trading API bases without ``/v2``).
ALPACA_PAPER_URL = "https://paper-api.alpaca.markets"
ALPACA_LIVE_URL = "https://api.alpaca.markets"
ALPACA_DATA_URL = "https://data.alpaca.markets"

#: The value the live-trading confirmation variable must hold, spelled out on purpose.
LIVE_CONFIRMATION_VALUE = "I_UNDERSTAND_THIS_IS_REAL_MONEY"

EMBEDDED_DB_NAME = "trading_monitor"
EMBEDDED_TEST_DB_NAME = "trading_monitor_test"
DEFAULT_EMBEDDED_PG_PORT = 54329
DEFAULT_PAPER_EXCHANGE_PORT = 8765

_dotenv_loaded = False


def load_environment(env_file: Path | None = None) -> None:
    """Read ``.env`` once into the process environment; real environment variables win."""
    global _dotenv_loaded
    if _dotenv_loaded and env_file is None:
        return
    load_dotenv(env_file or PROJECT_ROOT / ".env", override=False)
    _dotenv_loaded = True


class Secret:
    """A secret string that shows itself only through ``reveal()``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: pass it to the library that needs it, never to a log."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__


# --------------------------------------------------------------------------- readers


def _raw(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def env_str(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    """A string variable; empty counts as unset."""
    value = _raw(env, name)
    return default if value is None else value


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int | None = None,
            maximum: int | None = None) -> int:
    """An integer variable within optional bounds."""
    value = _raw(env, name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ConfigurationError(f"{name} must be at most {maximum}, got {number}")
    return number


def env_decimal(env: Mapping[str, str], name: str, default: str, *,
                minimum: Decimal | None = None, maximum: Decimal | None = None) -> Decimal:
    """A decimal variable (money, percentages) within optional bounds; never a float."""
    value = _raw(env, name) or default
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ConfigurationError(f"{name} must be a decimal number, got {value!r}") from None
    if not number.is_finite():
        raise ConfigurationError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and number < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ConfigurationError(f"{name} must be at most {maximum}, got {number}")
    return number


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    """A boolean variable: true/false, yes/no, on/off or 1/0."""
    value = _raw(env, name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be true or false, got {value!r}")


def env_time(env: Mapping[str, str], name: str, default: str) -> dt.time:
    """A time of day as HH:MM (US/Eastern wall-clock time)."""
    value = _raw(env, name) or default
    try:
        hours, minutes = value.split(":")
        return dt.time(int(hours), int(minutes))
    except ValueError:
        raise ConfigurationError(f"{name} must be a time of day as HH:MM, got {value!r}") from None


def env_choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    """One of a fixed set of words (case-insensitive, returned lower-case)."""
    value = (_raw(env, name) or default).lower()
    if value not in choices:
        raise ConfigurationError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def env_url(env: Mapping[str, str], name: str) -> str | None:
    """An http(s) base URL without a trailing slash or ``/v2`` (alpaca-py appends it)."""
    value = _raw(env, name)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"{name} must be an http(s) URL such as https://paper-api.alpaca.markets, "
                                 f"got {_redact_url(value)!r}")
    value = value.rstrip("/")
    if value.endswith("/v2"):
        raise ConfigurationError(f"{name} must not end with /v2 (alpaca-py adds it), got {_redact_url(value)!r}")
    return value


def _redact_url(url: str) -> str:
    """A URL with its user information replaced by ***: everything between the scheme's ``://``
    and the *last* ``@`` goes. Text-based on purpose: a URL parser splits an unencoded ``#`` or
    ``?`` in a password off as a fragment or query and would leave the rest of it in view."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***" if "@" in url else url
    if "@" not in rest:
        return url
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


def url_userinfo_secrets(url: str | None) -> list[str]:
    """The user information of a URL and its password part, as written (for the log scrubber,
    before the URL is even parsed)."""
    if not url or "://" not in url:
        return []
    rest = url.partition("://")[2]
    if "@" not in rest:
        return []
    userinfo = rest.rpartition("@")[0]
    password = userinfo.partition(":")[2]
    return [value for value in (userinfo, password, unquote(password)) if value]


# --------------------------------------------------------------------------- database


@dataclass(frozen=True)
class PostgresConfig:
    """Where the database is. ``source`` says which variable it came from."""

    host: str
    port: int
    dbname: str
    user: str
    password: Secret = field(default_factory=lambda: Secret(""))
    sslmode: str | None = None
    source: str = "embedded"
    #: The schema of the upstream ``analysis_decision`` when it is not in ``public`` (a table
    #: created inside NocoDB lives in the base's own schema); from ``DECISION_SCHEMA``.
    decision_schema: str | None = None

    @property
    def embedded(self) -> bool:
        """True when the project runs the server itself (the local cluster under ``var/``)."""
        return self.source == "embedded"

    def describe(self) -> str:
        """Host, port, database and user, never the password."""
        return f"{self.user}@{self.host}:{self.port}/{self.dbname} (from {self.source})"

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the driver's connect call (the only place the password is revealed)."""
        kwargs: dict[str, Any] = {"host": self.host, "port": self.port, "dbname": self.dbname, "user": self.user}
        if self.password:
            kwargs["password"] = self.password.reveal()
        if self.sslmode:
            kwargs["sslmode"] = self.sslmode
        return kwargs


def parse_database_url(url: str, variable: str) -> PostgresConfig:
    """Turn ``postgresql://user:password@host:port/dbname?sslmode=...`` into a ``PostgresConfig``."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ConfigurationError(f"{variable} must start with postgresql://, got {_redact_url(url)!r}")
    userinfo = url.partition("://")[2].rpartition("@")[0]
    if any(char in userinfo for char in "#?/"):
        raise ConfigurationError(
            f"{variable}: the user or password contains '#', '?' or '/', which end the address part of a URL; "
            f"percent-encode them (# is %23, ? is %3F, / is %2F, @ is %40), got {_redact_url(url)!r}")
    dbname = unquote(parts.path.lstrip("/"))
    if not parts.hostname or not dbname:
        raise ConfigurationError(f"{variable} must name a host and a database "
                                 f"(postgresql://user:password@host:5432/dbname), got {_redact_url(url)!r}")
    try:
        port = parts.port or 5432
    except ValueError:
        raise ConfigurationError(f"{variable} has an invalid port: {_redact_url(url)!r}") from None
    sslmode = None
    for item in parts.query.split("&"):
        if item.startswith("sslmode="):
            sslmode = item.split("=", 1)[1]
    return PostgresConfig(
        host=parts.hostname,
        port=port,
        dbname=dbname,
        user=unquote(parts.username or "postgres"),
        password=Secret(unquote(parts.password or "")),
        sslmode=sslmode,
        source=variable,
    )


def embedded_postgres_config(test_mode: bool = False, env: Mapping[str, str] | None = None) -> PostgresConfig:
    """The connection to the project's own local cluster (started on demand under ``var/``)."""
    env = os.environ if env is None else env
    port = env_int(env, "EMBEDDED_PG_PORT", DEFAULT_EMBEDDED_PG_PORT, minimum=1024, maximum=65535)
    return PostgresConfig(host="127.0.0.1", port=port,
                          dbname=EMBEDDED_TEST_DB_NAME if test_mode else EMBEDDED_DB_NAME,
                          user="postgres", source="embedded")


def get_postgres_config(test_mode: bool = False, env: Mapping[str, str] | None = None) -> PostgresConfig:
    """The database to use.

    Normal mode: ``DATABASE_URL``, else ``POSTGRES_HOST/PORT/DB/USER/PASSWORD``, else the
    embedded cluster. Test mode: ``TEST_DATABASE_URL``, else the embedded cluster's separate
    test database; test mode never uses the production variables.
    """
    if env is None:
        load_environment()
        env = os.environ
    if test_mode:
        url = env_str(env, "TEST_DATABASE_URL")
        if url:
            return parse_database_url(url, "TEST_DATABASE_URL")
        return embedded_postgres_config(test_mode=True, env=env)
    url = env_str(env, "DATABASE_URL")
    if url:
        return replace(parse_database_url(url, "DATABASE_URL"), decision_schema=decision_schema_setting(env))
    host = env_str(env, "POSTGRES_HOST")
    if host:
        dbname = env_str(env, "POSTGRES_DB")
        user = env_str(env, "POSTGRES_USER")
        missing = [name for name, value in (("POSTGRES_DB", dbname), ("POSTGRES_USER", user)) if not value]
        if missing:
            raise ConfigurationError(f"POSTGRES_HOST is set, so {' and '.join(missing)} must be set too")
        return PostgresConfig(
            host=host,
            port=env_int(env, "POSTGRES_PORT", 5432, minimum=1, maximum=65535),
            dbname=dbname or "",
            user=user or "",
            password=Secret(env_str(env, "POSTGRES_PASSWORD", "") or ""),
            sslmode=env_str(env, "POSTGRES_SSLMODE"),
            source="POSTGRES_HOST",
            decision_schema=decision_schema_setting(env),
        )
    return embedded_postgres_config(test_mode=False, env=env)


def decision_schema_setting(env: Mapping[str, str], name: str = "DECISION_SCHEMA") -> str | None:
    """The validated schema name of ``analysis_decision`` (``None``: the default search path)."""
    value = env_str(env, name)
    if value is None:
        return None
    if not value.replace("_", "").isalnum() or value[0].isdigit():
        raise ConfigurationError(f"{name} must be a plain schema name (letters, digits, _), got {value!r}")
    return value


# --------------------------------------------------------------------------- broker


@dataclass(frozen=True)
class AlpacaConfig:
    """How to reach the broker.

    ``mode`` is ``embedded`` (the project's paper exchange, started on demand), ``local``
    (another Alpaca-compatible server at ``base_url``), ``paper`` (Alpaca's paper API) or
    ``live`` (real money: needs ``ALPACA_PAPER=false`` *and* the confirmation variable).
    """

    api_key: Secret
    secret_key: Secret
    mode: str
    base_url: str | None
    data_url: str | None
    timeout_seconds: float = 10.0
    embedded_port: int = DEFAULT_PAPER_EXCHANGE_PORT
    #: The trade-updates websocket (``ALPACA_STREAM_URL``); None: Alpaca's own for paper/live,
    #: the one the paper exchange names (``GET /admin/stream``) for a local or embedded exchange.
    stream_url: str | None = None

    @property
    def paper(self) -> bool:
        """False only for real money."""
        return self.mode != "live"

    def describe(self) -> str:
        """The mode and URLs, with no keys."""
        return f"{self.mode} (trading {self.base_url or 'embedded paper exchange'}, data {self.data_url or 'same'})"


def get_alpaca_config(test_mode: bool = False, env: Mapping[str, str] | None = None) -> AlpacaConfig:
    """The broker settings, refusing any ambiguous combination (see ``_broker_config``), with
    the trade-updates stream's URL (``ALPACA_STREAM_URL``, a ws(s) URL) when one is set."""
    if env is None:
        load_environment()
        env = os.environ
    config = _broker_config(test_mode, env)
    stream_url = _raw(env, "ALPACA_STREAM_URL")
    if stream_url is not None:
        parts = urlsplit(stream_url)
        if parts.scheme not in ("ws", "wss") or not parts.netloc:
            raise ConfigurationError("ALPACA_STREAM_URL must be a ws(s) URL such as "
                                     f"wss://paper-api.alpaca.markets/stream, got {_redact_url(stream_url)!r}")
        config = replace(config, stream_url=stream_url)
    return config


def _broker_config(test_mode: bool, env: Mapping[str, str]) -> AlpacaConfig:
    """The broker settings, refusing any ambiguous combination.

    - no keys and no ``ALPACA_BASE_URL``: the embedded paper exchange;
    - no keys and ``ALPACA_BASE_URL``: an Alpaca-compatible server there (keys default to
      placeholders, which the local exchange accepts);
    - keys: Alpaca's paper API, or live only with ``ALPACA_PAPER=false`` and
      ``ALPACA_LIVE_CONFIRM`` set to the spelled-out confirmation. Test mode never goes live.
    """
    key = env_str(env, "ALPACA_API_KEY")
    secret = env_str(env, "ALPACA_SECRET_KEY")
    if bool(key) != bool(secret):
        present, absent = ("ALPACA_API_KEY", "ALPACA_SECRET_KEY") if key else ("ALPACA_SECRET_KEY", "ALPACA_API_KEY")
        raise ConfigurationError(f"{present} is set but {absent} is not: set both or neither")
    base_url = env_url(env, "ALPACA_BASE_URL")
    data_url = env_url(env, "ALPACA_DATA_URL")
    paper = env_bool(env, "ALPACA_PAPER", True)
    confirmation = env_str(env, "ALPACA_LIVE_CONFIRM")
    timeout = float(env_decimal(env, "BROKER_TIMEOUT_SECONDS", "10", minimum=Decimal("0.5"), maximum=Decimal("120")))
    port = env_int(env, "PAPER_EXCHANGE_PORT", DEFAULT_PAPER_EXCHANGE_PORT, minimum=1024, maximum=65535)

    if not key:
        if not paper:
            raise ConfigurationError("ALPACA_PAPER=false needs ALPACA_API_KEY and ALPACA_SECRET_KEY of a live account")
        if base_url is None:
            return AlpacaConfig(Secret("embedded"), Secret("embedded"), "embedded", None, None, timeout, port)
        return AlpacaConfig(Secret("local"), Secret("local"), "local", base_url, data_url or base_url, timeout, port)

    live = not paper
    if live and test_mode:
        # --test-mode can never reach a live account, whatever the environment says.
        live = False
    if live and confirmation != LIVE_CONFIRMATION_VALUE:
        raise ConfigurationError(
            f"ALPACA_PAPER=false asks for live trading, which also needs "
            f"ALPACA_LIVE_CONFIRM={LIVE_CONFIRMATION_VALUE}; "
            "refusing to start (set ALPACA_PAPER=true for paper trading)")
    if live:
        return AlpacaConfig(Secret(key), Secret(secret or ""), "live", base_url or ALPACA_LIVE_URL,
                            data_url or ALPACA_DATA_URL, timeout, port)
    if base_url == ALPACA_LIVE_URL:
        raise ConfigurationError("ALPACA_BASE_URL points at the live API while paper trading is selected; "
                                 f"use {ALPACA_PAPER_URL} or leave it unset")
    return AlpacaConfig(Secret(key), Secret(secret or ""), "paper", base_url or ALPACA_PAPER_URL,
                        data_url or ALPACA_DATA_URL, timeout, port)


# --------------------------------------------------------------------------- schedule and risk


@dataclass(frozen=True)
class ScheduleConfig:
    """When the programs run (US/Eastern wall-clock times, trading days only)."""

    executor_time: dt.time
    session_start: dt.time
    session_end: dt.time
    order_monitor_interval_minutes: int
    position_monitor_interval_minutes: int
    order_monitor_evening: dt.time
    position_monitor_evening: dt.time
    daytrade_exit_minutes_before_close: int
    #: The end-of-day report (``scripts/eod_report.py``), after the close.
    eod_report_time: dt.time = dt.time(16, 30)


def get_schedule_config(env: Mapping[str, str] | None = None) -> ScheduleConfig:
    """The schedule, with the design's defaults."""
    if env is None:
        load_environment()
        env = os.environ
    return ScheduleConfig(
        executor_time=env_time(env, "EXECUTOR_TIME", "09:45"),
        session_start=env_time(env, "MONITOR_SESSION_START", "09:30"),
        session_end=env_time(env, "MONITOR_SESSION_END", "16:00"),
        order_monitor_interval_minutes=env_int(env, "ORDER_MONITOR_INTERVAL_MINUTES", 5, minimum=1, maximum=60),
        position_monitor_interval_minutes=env_int(env, "POSITION_MONITOR_INTERVAL_MINUTES", 10, minimum=1, maximum=60),
        order_monitor_evening=env_time(env, "ORDER_MONITOR_EVENING_TIME", "18:00"),
        position_monitor_evening=env_time(env, "POSITION_MONITOR_EVENING_TIME", "18:15"),
        daytrade_exit_minutes_before_close=env_int(env, "DAYTRADE_EXIT_MINUTES_BEFORE_CLOSE", 10,
                                                   minimum=1, maximum=120),
        eod_report_time=env_time(env, "EOD_REPORT_TIME", "16:30"),
    )


@dataclass(frozen=True)
class RiskLimits:
    """The limits every new entry must pass before anything is sent to the broker.

    Money in dollars, percentages as percent (``10`` means 10 %).
    """

    max_position_notional: Decimal
    max_position_pct_of_equity: Decimal
    max_total_exposure_pct: Decimal
    max_open_trades: int
    max_orders_per_day: int
    allow_same_symbol: bool
    daily_loss_limit: Decimal
    risk_per_trade: Decimal
    min_buying_power_reserve: Decimal
    #: A NEW_TRADE whose latest quote is further than this from its planned entry (percent of the
    #: entry, either way) is refused as STALE_PLAN; 0 turns this check off (the stop check stays).
    max_entry_drift_pct: Decimal = Decimal("5")


def get_risk_limits(env: Mapping[str, str] | None = None) -> RiskLimits:
    """The risk limits, with conservative defaults for a $100,000 paper account."""
    if env is None:
        load_environment()
        env = os.environ
    zero = Decimal("0")
    return RiskLimits(
        max_position_notional=env_decimal(env, "MAX_POSITION_NOTIONAL", "10000", minimum=zero),
        max_position_pct_of_equity=env_decimal(env, "MAX_POSITION_PCT_OF_EQUITY", "10", minimum=zero,
                                               maximum=Decimal("100")),
        max_total_exposure_pct=env_decimal(env, "MAX_TOTAL_EXPOSURE_PCT", "80", minimum=zero, maximum=Decimal("400")),
        max_open_trades=env_int(env, "MAX_OPEN_TRADES", 10, minimum=0),
        max_orders_per_day=env_int(env, "MAX_ORDERS_PER_DAY", 20, minimum=0),
        allow_same_symbol=env_bool(env, "ALLOW_SAME_SYMBOL", False),
        daily_loss_limit=env_decimal(env, "DAILY_LOSS_LIMIT", "2000", minimum=zero),
        risk_per_trade=env_decimal(env, "RISK_PER_TRADE", "500", minimum=zero),
        min_buying_power_reserve=env_decimal(env, "MIN_BUYING_POWER_RESERVE", "0", minimum=zero),
        max_entry_drift_pct=env_decimal(env, "MAX_ENTRY_DRIFT_PCT", "5", minimum=zero, maximum=Decimal("100")),
    )


@dataclass(frozen=True)
class MonitorConfig:
    """Choices of the monitors where trading has more than one sensible answer."""

    #: What to do with an entry that is partly filled and still working: ``cancel_remainder``
    #: (default: the filled shares get their own stop at once) or ``wait`` (keep working;
    #: Alpaca arms bracket legs only on a complete fill, so the filled shares wait unprotected).
    partial_entry_policy: str
    #: Direct look-ups that must miss before an order is marked ``not_found``.
    not_found_max_misses: int
    #: Prefix of every client order id this system sends (tells our orders from others).
    client_order_prefix: str
    #: How hard each kind of exit leans on the market (trading/exits.py): CRITICAL (market at
    #: once), HIGH (limit at the bid, then market), NORMAL (limit at the mid, walked to the bid).
    exit_urgency_close: str = "HIGH"
    exit_urgency_day_end: str = "HIGH"
    exit_urgency_flatten: str = "CRITICAL"
    #: Steps of a NORMAL exit's walk from the mid to the bid before the market order.
    exit_walk_steps: int = 2
    #: Time a step gets to fill before the next (below the monitor's 5 minutes: one step per run).
    exit_step_seconds: int = 240


def get_monitor_config(env: Mapping[str, str] | None = None) -> MonitorConfig:
    """The monitors' policy choices."""
    if env is None:
        load_environment()
        env = os.environ
    prefix = env_str(env, "CLIENT_ORDER_PREFIX", "tm") or "tm"
    if not prefix.isalnum() or len(prefix) > 12:
        raise ConfigurationError(f"CLIENT_ORDER_PREFIX must be 1-12 letters or digits, got {prefix!r}")
    return MonitorConfig(
        partial_entry_policy=env_choice(env, "PARTIAL_ENTRY_POLICY", "cancel_remainder", ("cancel_remainder", "wait")),
        not_found_max_misses=env_int(env, "ORDER_NOT_FOUND_MAX_MISSES", 3, minimum=1, maximum=100),
        client_order_prefix=prefix,
        exit_urgency_close=env_choice(env, "EXIT_URGENCY_CLOSE", "high", URGENCIES).upper(),
        exit_urgency_day_end=env_choice(env, "EXIT_URGENCY_DAY_END", "high", URGENCIES).upper(),
        exit_urgency_flatten=env_choice(env, "EXIT_URGENCY_FLATTEN", "critical", URGENCIES).upper(),
        exit_walk_steps=env_int(env, "EXIT_WALK_STEPS", 2, minimum=0, maximum=20),
        exit_step_seconds=env_int(env, "EXIT_STEP_SECONDS", 240, minimum=10, maximum=3600),
    )


#: The exit urgencies (trading/exits.py), least to most patient.
URGENCIES: tuple[str, ...] = ("critical", "high", "normal")


@dataclass(frozen=True)
class BreakerConfig:
    """The circuit breakers (trading/breakers.py): when the system stops itself.

    The daily-loss breaker uses ``RiskLimits.daily_loss_limit`` (``DAILY_LOSS_LIMIT``).
    """

    #: More than this many broker errors within the window: REDUCE_ONLY.
    broker_errors: int
    broker_error_window: dt.timedelta
    #: The broker-error REDUCE_ONLY lifts itself after this long without a broker error.
    broker_quiet: dt.timedelta
    #: More than this many database errors within the window: HALTED (reset by hand).
    database_errors: int
    database_error_window: dt.timedelta
    #: A critical reconciliation finding (unknown position, short, sell beyond the shares held): REDUCE_ONLY.
    reconciliation: bool
    #: The daily-loss breaker (FLATTEN); off only for demos and tests that need losses.
    daily_loss: bool


def get_breaker_config(env: Mapping[str, str] | None = None) -> BreakerConfig:
    """The circuit breakers, with the event-loop design's defaults."""
    if env is None:
        load_environment()
        env = os.environ
    return BreakerConfig(
        broker_errors=env_int(env, "BREAKER_BROKER_ERRORS", 5, minimum=1),
        broker_error_window=dt.timedelta(minutes=env_int(env, "BREAKER_BROKER_ERROR_WINDOW_MINUTES", 5,
                                                         minimum=1, maximum=1440)),
        broker_quiet=dt.timedelta(minutes=env_int(env, "BREAKER_BROKER_QUIET_MINUTES", 10, minimum=1, maximum=1440)),
        database_errors=env_int(env, "BREAKER_DATABASE_ERRORS", 3, minimum=1),
        database_error_window=dt.timedelta(seconds=env_int(env, "BREAKER_DATABASE_ERROR_WINDOW_SECONDS", 60,
                                                           minimum=1, maximum=86400)),
        reconciliation=env_bool(env, "BREAKER_RECONCILIATION", True),
        daily_loss=env_bool(env, "BREAKER_DAILY_LOSS", True),
    )


# --------------------------------------------------------------------------- notifications


@dataclass(frozen=True)
class NotifyConfig:
    """Where notifications go (apprise URLs, secrets) and how long a send may take.

    No URL: nothing is sent (the outbox rows are kept, marked ``not_configured``).
    """

    urls: tuple[Secret, ...] = ()
    #: Seconds one message may take to one service before its outcome counts as unknown.
    timeout_seconds: int = 5
    #: Seconds a whole delivery step may take per run; the rest waits for the next run.
    budget_seconds: int = 15
    #: Failed attempts (service down, error answer) before a message is given up as ``failed``.
    max_attempts: int = 10
    #: Runs skipped in a row for a held lock before an operator is told.
    skipped_runs_alert: int = 3

    def describe(self) -> str:
        """``2 URL(s) (json, discord)`` or ``none``: the schemes only, never the URLs."""
        if not self.urls:
            return "none"
        schemes = ", ".join(url.reveal().partition("://")[0] or "?" for url in self.urls)
        return f"{len(self.urls)} URL(s) ({schemes})"


def split_notify_urls(text: str | None) -> list[str]:
    """The URLs of ``NOTIFY_URLS``: separated by commas and/or white space."""
    return [item for item in re.split(r"[\s,]+", text or "") if item]


def notify_url_secrets(url: str) -> list[str]:
    """The parts of a notification URL that may be tokens (webhook ids and tokens, passwords,
    bot tokens in the host part, query values), for the log scrubber: the whole URL, its user
    information and every path or query piece of 6 characters or more."""
    rest = url.partition("://")[2]
    pieces = [url, *url_userinfo_secrets(url)]
    host, _, path = rest.partition("/")
    host = host.rpartition("@")[2]
    # A bot token often stands where a host would (tgram://123456:ABC-DEF/chat): keep it secret too.
    if host and not re.fullmatch(r"[A-Za-z0-9.-]+(:\d+)?", host):
        pieces.append(host)
    pieces.extend(piece for piece in re.split(r"[/?&=#]+", path) if len(piece) >= 6)
    return [piece for piece in pieces if piece]


def _check_notify_url(url: str, position: int) -> None:
    import logging

    import apprise

    # apprise logs an unparseable URL in full: silenced here, the error below names no secret.
    apprise_logger = logging.getLogger("apprise")
    disabled, apprise_logger.disabled = apprise_logger.disabled, True
    try:
        known = apprise.Apprise.instantiate(url) is not None
    finally:
        apprise_logger.disabled = disabled
    if not known:
        raise ConfigurationError(f"NOTIFY_URLS item {position} (scheme {url.partition('://')[0]!r}) is not a "
                                 "notification URL apprise understands (see https://github.com/caronc/apprise/wiki)")


def get_notify_config(env: Mapping[str, str] | None = None) -> NotifyConfig:
    """``NOTIFY_URLS`` and the delivery bounds; each URL is checked by apprise (the message names
    its position and scheme, never the URL)."""
    if env is None:
        load_environment()
        env = os.environ
    urls = split_notify_urls(env.get("NOTIFY_URLS"))
    for position, url in enumerate(urls, start=1):
        _check_notify_url(url, position)
    return NotifyConfig(
        urls=tuple(Secret(url) for url in urls),
        timeout_seconds=env_int(env, "NOTIFY_TIMEOUT_SECONDS", 5, minimum=1, maximum=60),
        budget_seconds=env_int(env, "NOTIFY_BUDGET_SECONDS", 15, minimum=1, maximum=300),
        max_attempts=env_int(env, "NOTIFY_MAX_ATTEMPTS", 10, minimum=1, maximum=1000),
        skipped_runs_alert=env_int(env, "NOTIFY_SKIPPED_RUNS", 3, minimum=1, maximum=1000),
    )


# --------------------------------------------------------------------------- everything


@dataclass(frozen=True)
class Settings:
    """All configuration of one program run."""

    test_mode: bool
    postgres: PostgresConfig
    alpaca: AlpacaConfig
    schedule: ScheduleConfig
    risk: RiskLimits
    monitor: MonitorConfig
    log_level: str
    breakers: BreakerConfig = field(default_factory=lambda: get_breaker_config({}))
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    #: ``text`` (for people, the default) or ``json`` (one object per line, for machines).
    log_format: str = "text"

    def describe(self) -> dict[str, str]:
        """Every setting as display text, secrets redacted: logged once at start."""
        shown: dict[str, str] = {
            "test_mode": str(self.test_mode),
            "database": self.postgres.describe(),
            "broker": self.alpaca.describe(),
            "log_level": self.log_level,
            "log_format": self.log_format,
            "notify_urls": self.notify.describe(),
        }
        for group in (self.schedule, self.risk, self.monitor, self.breakers):
            for item in fields(group):
                shown[item.name] = str(getattr(group, item.name))
        return shown


SECRET_VARIABLES = ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "POSTGRES_PASSWORD", "CONSOLE_TOKEN")
URL_VARIABLES = ("DATABASE_URL", "TEST_DATABASE_URL")


def raw_secrets(env: Mapping[str, str] | None = None) -> list[str]:
    """Every secret as written in the environment (and ``.env``), read before any validation, so
    the log scrubber knows them before the first message (a configuration error) can be printed."""
    if env is None:
        load_environment()
        env = os.environ
    values = [(env.get(name) or "").strip() for name in SECRET_VARIABLES]
    for name in URL_VARIABLES:
        values.extend(url_userinfo_secrets((env.get(name) or "").strip()))
    for url in split_notify_urls(env.get("NOTIFY_URLS")):
        values.extend(notify_url_secrets(url))
    return [value for value in values if value]


def load_settings(test_mode: bool = False, env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raises ``ConfigurationError`` on the first bad one."""
    if env is None:
        load_environment()
        env = os.environ
    return Settings(
        test_mode=test_mode,
        postgres=get_postgres_config(test_mode, env),
        alpaca=get_alpaca_config(test_mode, env),
        schedule=get_schedule_config(env),
        risk=get_risk_limits(env),
        monitor=get_monitor_config(env),
        log_level=env_choice(env, "LOG_LEVEL", "INFO", ("debug", "info", "warning", "error")).upper(),
        breakers=get_breaker_config(env),
        notify=get_notify_config(env),
        log_format=env_choice(env, "LOG_FORMAT", "text", ("text", "json")),
    )
