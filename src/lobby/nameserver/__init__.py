"""The DNS interface (SPEC §17): names, the label index, the wire, cached answers, and
the UDP and TCP server.
"""
