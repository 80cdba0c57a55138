"""What operators read: the log formatter and node event log, the Prometheus metrics."""
