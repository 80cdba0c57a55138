"""Broker transports. Only transport lives here; see base.py for the contract."""

from lobby.drivers.base import Driver, DriverError, LinkHandler, MessageHandler, Topic

__all__ = ["Driver", "DriverError", "LinkHandler", "MessageHandler", "Topic"]
