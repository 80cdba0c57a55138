"""This node on the bus: presence (identity, the receive pipeline, the announcer, links),
local labels, relay, health checks, the brokers built from the settings, its report.
It reads the settings through Protocols and never imports lobby.config.
"""
