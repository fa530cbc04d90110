"""The operator console: a REST API (and, later, a dashboard) over the contract tables.

A fourth program beside the executor and the two monitors. It reads the same tables and writes
only through the same contract: a Close or a changed stop is an approved decision in
``analysis_decision`` (carried out by the order monitor's next run), a mode switch goes through
``trading.state`` (audited). A web request never calls the broker to change anything.

Start it with ``python -m console`` (``make console``); ``console.app.create_app`` builds the app.
"""
