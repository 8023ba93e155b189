"""The state database (SQLite): alert rule state, the notice outbox, thresholds and samples.

May import `core`. Blocking calls run on the store's own thread (`AsyncStore`).
"""
