"""Home Assistant and MQTT generation, pure: topic layout, the declarative entity table, state
rendering, discovery payloads and the dashboard.

May import `core` and `config`. No network, no broker.
"""
