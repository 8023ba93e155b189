"""Notification channels and the dispatcher that drains the outbox to them. `channels.py` is
the channel registry: each channel (MQTT, ntfy, webhook, Apprise) with its config model, its
factory and its probe for `check`, declared once.

May import `core` and `store`.
"""
