"""The command line: the parser (`main`) and one module per command body.

The top layer: may import anything; nothing imports it.
"""
