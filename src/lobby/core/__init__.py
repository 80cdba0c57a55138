"""The pure foundations: the packet model and label rules, signing, ready answer bodies,
the clocks. No I/O, and nothing of lobby imported.
"""
