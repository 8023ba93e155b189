"""Pure core: the snapshot model, money, clocks, forecasts and the alert rules.

No I/O and no knowledge of MQTT, Home Assistant, HTTP or SQLite. Imports nothing from the
package but itself (and the top-level `exits`/version).
"""
