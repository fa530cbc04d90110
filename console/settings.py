"""The console's settings: where it listens, its bearer token, and the programs' own settings.

``CONSOLE_HOST`` (default ``127.0.0.1``), ``CONSOLE_PORT`` (default ``8080``), ``CONSOLE_TOKEN``
(the bearer token every write needs, and every request when the console listens beyond the
loopback interface), ``CONSOLE_OPERATOR`` (the name writes are attributed to, default
``operator``). The database and broker come from the same variables as the programs
(``config.load_settings``): with nothing configured, the embedded database.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from config import Secret, Settings, env_int, env_str, load_environment, load_settings
from trading.errors import ConfigurationError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
#: A token shorter than this is refused: it would be guessed.
MIN_TOKEN_LENGTH = 16
#: What an operator name may contain (it is written to audit rows and decisions).
OPERATOR_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ConsoleSettings:
    """Everything the console needs. ``trading`` holds the programs' settings (database, broker)."""

    trading: Settings
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: Secret = field(default_factory=lambda: Secret(""))
    operator: str = "operator"
    #: Database connections the console keeps open (requests beyond wait briefly for one).
    pool_size: int = 4

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def with_trading(self, trading: Settings) -> ConsoleSettings:
        return replace(self, trading=trading)


def load_console_settings(test_mode: bool = False, env: Mapping[str, str] | None = None, *,
                          trading: Settings | None = None) -> ConsoleSettings:
    """Read and validate the console's settings; ``ConfigurationError`` names the first bad one.

    Listening beyond the loopback interface without ``CONSOLE_TOKEN`` is refused: anyone on the
    network could read the book and close positions."""
    if env is None:
        load_environment()
        env = os.environ
    host = env_str(env, "CONSOLE_HOST", DEFAULT_HOST) or DEFAULT_HOST
    port = env_int(env, "CONSOLE_PORT", DEFAULT_PORT, minimum=1, maximum=65535)
    token = env_str(env, "CONSOLE_TOKEN", "") or ""
    operator = env_str(env, "CONSOLE_OPERATOR", "operator") or "operator"
    if token and len(token) < MIN_TOKEN_LENGTH:
        raise ConfigurationError(f"CONSOLE_TOKEN must be at least {MIN_TOKEN_LENGTH} characters "
                                 "(for example: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    if not is_loopback(host) and not token:
        raise ConfigurationError(f"CONSOLE_HOST={host} listens beyond this machine, which needs CONSOLE_TOKEN "
                                 "(every request must then carry it as a bearer token)")
    if not OPERATOR_PATTERN.match(operator):
        raise ConfigurationError("CONSOLE_OPERATOR must be 1-64 letters, digits or _.@-, got "
                                 f"{operator!r}")
    return ConsoleSettings(trading=trading or load_settings(test_mode=test_mode, env=env), host=host, port=port,
                           token=Secret(token), operator=operator)
