"""Push channels (ntfy, webhook, Apprise) and the dispatcher that drains the outbox to them.

May import `core`, `config` and `store`.
"""
