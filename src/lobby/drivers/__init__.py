"""Broker transports. Only transport lives here; see base.py for the contract."""

from lobby.drivers.base import (
    BatchHandler,
    Driver,
    DriverError,
    LinkHandler,
    MessageHandler,
    Topic,
)

__all__ = ["BatchHandler", "Driver", "DriverError", "LinkHandler", "MessageHandler", "Topic"]
