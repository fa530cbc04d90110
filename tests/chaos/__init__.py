"""The chaos day: a seeded, randomized trading day that proves the invariants of design.md §6.

- ``tests.chaos.invariants``: the checker, run after every program run against the broker (read
  through the real alpaca-py client) and the database; it counts violations per invariant.
- ``tests.chaos.day``: the seeded generator and player of a day: decisions, the three programs
  run at the scheduler's fire times (overlapping, in threads with their own connections), outside
  actions through alpaca-py, broker faults (``paper_exchange/faults.py``), runs killed at a
  network call, and price gaps (the exchange's admin API).

``tests/test_chaos.py`` plays a few seeds in the test suite; ``scripts/chaos_day.py`` (``make chaos``)
plays many and replays one (``--seed S``).
"""
