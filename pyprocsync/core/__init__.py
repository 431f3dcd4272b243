"""The protocol, free of I/O: flows, operations, Lua scripts and their wire contract, keys,
parameters and clock estimation. Imports nothing from :mod:`pyprocsync.shells` or
:mod:`pyprocsync.tools`.
"""
