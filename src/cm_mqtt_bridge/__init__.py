"""CrossModel wallet balance and spend on MQTT and Home Assistant."""

__version__ = "0.1.0"
