"""Alerts: rules with hysteresis, durable state and outbox, and the channels that deliver them."""
