"""A local Alpaca-compatible paper exchange.

The real alpaca-py clients trade against it with ``url_override``::

    from paper_exchange import PaperExchange, start_server

    handle = start_server(exchange=PaperExchange(seed=7, simulated_clock=True,
                                                 start_time="2026-11-20T14:45:00Z"))
    client = TradingClient("key", "secret", paper=True, url_override=handle.url)
    ...
    handle.stop()

See ``paper_exchange/README.md`` for the HTTP and admin APIs.
"""

import trading.preflight  # noqa: F401  (first: one line, not a traceback, outside .venv)

# isort: split

from .engine import PaperExchange
from .errors import ExchangeError
from .server import ExchangeServer, start_server

__all__ = ["ExchangeError", "ExchangeServer", "PaperExchange", "start_server"]
