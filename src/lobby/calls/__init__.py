"""The client side of the HTTP API: what to send and how to read the answer (`requests`,
no I/O), and lobbyctl's HTTP/1.1 transport over a plain socket (`transport`). Imports
nothing else of lobby, so lobbyctl starts fast.
"""
