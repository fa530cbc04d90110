"""config: sources of settings, validation messages, secrets kept out of sight."""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal

import pytest

from config import (
    LIVE_CONFIRMATION_VALUE,
    Secret,
    get_alpaca_config,
    get_monitor_config,
    get_postgres_config,
    get_risk_limits,
    get_schedule_config,
    load_settings,
)
from trading.errors import ConfigurationError


def test_nothing_configured_gives_the_embedded_database_and_paper_exchange():
    settings = load_settings(env={})
    assert settings.postgres.embedded and settings.postgres.host == "127.0.0.1"
    assert settings.postgres.dbname == "trading_monitor"
    assert settings.alpaca.mode == "embedded" and settings.alpaca.paper
    assert get_postgres_config(test_mode=True, env={}).dbname == "trading_monitor_test"


def test_database_url_wins_over_postgres_variables_and_keeps_password_secret():
    env = {"DATABASE_URL": "postgresql://bot:s3cr%40t@db.example:6543/trading?sslmode=require",
           "POSTGRES_HOST": "ignored"}
    cfg = get_postgres_config(env=env)
    assert (cfg.host, cfg.port, cfg.dbname, cfg.user, cfg.sslmode) == ("db.example", 6543, "trading", "bot", "require")
    assert cfg.password.reveal() == "s3cr@t"
    assert "s3cr" not in repr(cfg) and "s3cr" not in cfg.describe()
    assert cfg.connect_kwargs()["password"] == "s3cr@t"


def test_postgres_variables_are_used_without_database_url():
    cfg = get_postgres_config(env={"POSTGRES_HOST": "nocodb", "POSTGRES_PORT": "5433", "POSTGRES_DB": "noco",
                                   "POSTGRES_USER": "trader", "POSTGRES_PASSWORD": "pw"})
    assert (cfg.host, cfg.port, cfg.dbname, cfg.user, cfg.source) == ("nocodb", 5433, "noco", "trader", "POSTGRES_HOST")


def test_test_mode_uses_only_test_database_url():
    env = {"DATABASE_URL": "postgresql://prod@prod/prod", "TEST_DATABASE_URL": "postgresql://t@localhost:5432/t"}
    assert get_postgres_config(test_mode=True, env=env).dbname == "t"
    assert get_postgres_config(test_mode=True, env={"DATABASE_URL": "postgresql://prod@prod/prod"}).embedded


@pytest.mark.parametrize("env, words", [
    ({"POSTGRES_HOST": "h", "POSTGRES_PORT": "abc", "POSTGRES_DB": "d", "POSTGRES_USER": "u"}, "POSTGRES_PORT"),
    ({"POSTGRES_HOST": "h"}, "POSTGRES_DB and POSTGRES_USER"),
    ({"DATABASE_URL": "mysql://x@y/z"}, "DATABASE_URL must start with postgresql://"),
    ({"DATABASE_URL": "postgresql://u:pw@host"}, "DATABASE_URL must name a host and a database"),
])
def test_malformed_database_settings_name_the_variable(env, words):
    with pytest.raises(ConfigurationError, match=words) as caught:
        get_postgres_config(env=env)
    assert "pw@" not in str(caught.value)


def test_keys_select_alpaca_paper_by_default():
    cfg = get_alpaca_config(env={"ALPACA_API_KEY": "PKTEST", "ALPACA_SECRET_KEY": "supersecret"})
    assert cfg.mode == "paper" and cfg.base_url == "https://paper-api.alpaca.markets"
    assert "supersecret" not in repr(cfg) and "PKTEST" not in repr(cfg) and "supersecret" not in cfg.describe()


def test_live_trading_needs_both_switches():
    keys = {"ALPACA_API_KEY": "AK", "ALPACA_SECRET_KEY": "S"}
    with pytest.raises(ConfigurationError, match="ALPACA_LIVE_CONFIRM"):
        get_alpaca_config(env={**keys, "ALPACA_PAPER": "false"})
    with pytest.raises(ConfigurationError, match="ALPACA_LIVE_CONFIRM"):
        get_alpaca_config(env={**keys, "ALPACA_PAPER": "false", "ALPACA_LIVE_CONFIRM": "yes"})
    live = get_alpaca_config(env={**keys, "ALPACA_PAPER": "false", "ALPACA_LIVE_CONFIRM": LIVE_CONFIRMATION_VALUE})
    assert live.mode == "live" and live.base_url == "https://api.alpaca.markets"
    # the confirmation alone does nothing
    assert get_alpaca_config(env={**keys, "ALPACA_LIVE_CONFIRM": LIVE_CONFIRMATION_VALUE}).mode == "paper"


def test_test_mode_never_reaches_a_live_account():
    env = {"ALPACA_API_KEY": "AK", "ALPACA_SECRET_KEY": "S", "ALPACA_PAPER": "false",
           "ALPACA_LIVE_CONFIRM": LIVE_CONFIRMATION_VALUE}
    cfg = get_alpaca_config(test_mode=True, env=env)
    assert cfg.mode == "paper" and "paper-api" in (cfg.base_url or "")


def test_paper_mode_refuses_a_live_base_url():
    with pytest.raises(ConfigurationError, match="live API"):
        get_alpaca_config(env={"ALPACA_API_KEY": "AK", "ALPACA_SECRET_KEY": "S",
                               "ALPACA_BASE_URL": "https://api.alpaca.markets"})


def test_one_key_without_the_other_is_refused():
    with pytest.raises(ConfigurationError, match="ALPACA_API_KEY is set but ALPACA_SECRET_KEY is not"):
        get_alpaca_config(env={"ALPACA_API_KEY": "AK"})


def test_base_url_without_keys_is_a_local_exchange():
    cfg = get_alpaca_config(env={"ALPACA_BASE_URL": "http://127.0.0.1:8765/"})
    assert cfg.mode == "local" and cfg.base_url == "http://127.0.0.1:8765" and cfg.data_url == cfg.base_url


@pytest.mark.parametrize("value", ["ftp://x", "http://127.0.0.1:8765/v2", "not a url"])
def test_malformed_base_url_is_refused(value):
    with pytest.raises(ConfigurationError, match="ALPACA_BASE_URL"):
        get_alpaca_config(env={"ALPACA_BASE_URL": value})


def test_schedule_defaults_and_validation():
    schedule = get_schedule_config(env={})
    assert schedule.executor_time == dt.time(9, 45)
    assert schedule.order_monitor_interval_minutes == 5 and schedule.position_monitor_interval_minutes == 10
    assert schedule.daytrade_exit_minutes_before_close == 10
    with pytest.raises(ConfigurationError, match="EXECUTOR_TIME must be a time of day as HH:MM"):
        get_schedule_config(env={"EXECUTOR_TIME": "quarter to ten"})


def test_risk_limits_are_decimals_and_validated():
    risk = get_risk_limits(env={"MAX_POSITION_NOTIONAL": "2500.50"})
    assert risk.max_position_notional == Decimal("2500.50") and isinstance(risk.daily_loss_limit, Decimal)
    with pytest.raises(ConfigurationError, match="MAX_POSITION_PCT_OF_EQUITY must be at most 100"):
        get_risk_limits(env={"MAX_POSITION_PCT_OF_EQUITY": "150"})
    with pytest.raises(ConfigurationError, match="MAX_OPEN_TRADES must be a whole number"):
        get_risk_limits(env={"MAX_OPEN_TRADES": "ten"})
    with pytest.raises(ConfigurationError, match="ALLOW_SAME_SYMBOL must be true or false"):
        get_risk_limits(env={"ALLOW_SAME_SYMBOL": "maybe"})
    with pytest.raises(ConfigurationError, match="RISK_PER_TRADE must be a finite number"):
        get_risk_limits(env={"RISK_PER_TRADE": "NaN"})


def test_monitor_policy_choices():
    assert get_monitor_config(env={}).partial_entry_policy == "cancel_remainder"
    with pytest.raises(ConfigurationError, match="PARTIAL_ENTRY_POLICY must be one of"):
        get_monitor_config(env={"PARTIAL_ENTRY_POLICY": "hope"})
    with pytest.raises(ConfigurationError, match="CLIENT_ORDER_PREFIX"):
        get_monitor_config(env={"CLIENT_ORDER_PREFIX": "has-dash"})


def test_settings_description_redacts_every_secret(caplog):
    env = {"DATABASE_URL": "postgresql://bot:dbpassword123@db/trading", "ALPACA_API_KEY": "PKKEY123",
           "ALPACA_SECRET_KEY": "alpacasecret456"}
    settings = load_settings(env=env)
    caplog.set_level(logging.INFO)
    logging.getLogger("test").info("configuration: %s %r", settings.describe(), settings)
    text = caplog.text + repr(settings) + str(settings.describe())
    for secret in ("dbpassword123", "PKKEY123", "alpacasecret456"):
        assert secret not in text


def test_secret_hides_its_value():
    secret = Secret("abc")
    assert "abc" not in repr(secret) and "abc" not in str(secret) and f"{secret}" != "abc"
    assert secret.reveal() == "abc" and secret == Secret("abc") and bool(Secret("")) is False


@pytest.mark.parametrize("url", [
    "postgresql://u:Pw@x#55@host/db",            # an unencoded '#' cuts the URL in two
    "postgresql://u:Pw@x#55@host:port/db",
    "postgresql://u:Pw@x?55@host/db",
    "postgres://u:Pw@x/55@host/db",
])
def test_password_with_an_unencoded_hash_is_never_printed_in_the_configuration_error(url):
    with pytest.raises(ConfigurationError) as caught:
        get_postgres_config(env={"DATABASE_URL": url})
    message = str(caught.value)
    for fragment in ("Pw", "x#", "#55", "55@", "?55"):
        assert fragment not in message, message
    assert "://***@" in message and "percent-encode" in message, message


def test_wrong_scheme_error_redacts_up_to_the_last_at_sign():
    with pytest.raises(ConfigurationError) as caught:
        get_postgres_config(env={"DATABASE_URL": "mysql://u:Pw@x#55@host/db"})
    assert "'mysql://***@host/db'" in str(caught.value)
