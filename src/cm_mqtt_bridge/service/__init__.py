"""The running bridge: the MQTT publisher, per-account runtimes, the alert engine, inbound MQTT
commands, the health endpoint, metrics and the supervisor that keeps them running.

May import every layer below it (`core`, `store`, `notify`, `config`, `ha`, `crossmodel`).
"""
