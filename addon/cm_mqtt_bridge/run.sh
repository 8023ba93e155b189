#!/usr/bin/with-contenv bashio
# shellcheck shell=bash
# ==============================================================================
# Start cm-mqtt-bridge with the add-on options and the broker of the Supervisor's
# MQTT service (config.yaml: services: mqtt:need).
# The options are read by make_config.py from the options file the Supervisor
# validated; it writes them, with the broker below, into the bridge's YAML config.
# CM_ADDON_OPTIONS / CM_ADDON_CONFIG only exist so the tests can run this script
# with a stand-in bashio; the Supervisor never sets them.
# ==============================================================================
set -euo pipefail

readonly options_file="${CM_ADDON_OPTIONS:-/data/options.json}"
readonly config_file="${CM_ADDON_CONFIG:-/tmp/cm_mqtt_bridge/config.yaml}"
here="$(dirname "$(readlink -f "$0")")"
readonly here

bashio::config.require 'api_key' 'the bridge reads your wallet with a CrossModel API key (cm-...)'

if ! bashio::services.available 'mqtt'; then
    bashio::exit.nok 'No MQTT service: install and start the Mosquitto broker add-on (or another MQTT add-on) first.'
fi

mqtt_host="$(bashio::services mqtt 'host')"
mqtt_port="$(bashio::services mqtt 'port')"
mqtt_username="$(bashio::services mqtt 'username')"
mqtt_password="$(bashio::services mqtt 'password')"
mqtt_ssl="$(bashio::services mqtt 'ssl')"

bashio::log.info "MQTT broker from the Supervisor: ${mqtt_host}:${mqtt_port} (user ${mqtt_username})"
bashio::log.info "Account '$(bashio::config 'account_name')', polling every $(bashio::config 'poll_interval') s"

# The broker credentials reach make_config.py through its environment only (never argv,
# never exported to the bridge).
umask 077
CM_ADDON_MQTT_HOST="${mqtt_host}" \
CM_ADDON_MQTT_PORT="${mqtt_port}" \
CM_ADDON_MQTT_USERNAME="${mqtt_username}" \
CM_ADDON_MQTT_PASSWORD="${mqtt_password}" \
CM_ADDON_MQTT_SSL="${mqtt_ssl}" \
    python3 "${here}/make_config.py" \
        --options "${options_file}" --output "${config_file}" --data-dir /data

# A ready dashboard for this account, once per start: the user copies it from the Log tab.
bashio::log.info 'Dashboard: Settings > Dashboards > Add dashboard > New dashboard from scratch > ⋮ > Raw configuration editor, then paste this YAML:'
cm-mqtt-bridge --config "${config_file}" dashboard \
    || bashio::log.warning 'could not print the dashboard YAML (cm-mqtt-bridge dashboard)'

exec cm-mqtt-bridge --config "${config_file}" run
