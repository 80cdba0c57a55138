"""The live view and what is built from it: the registry (records, TTL, the change
index), the change feed, the answers kept until the index moves, Prometheus SD groups.
"""
