"""The adapters that run the protocol's flows: the blocking and the asyncio shell with their
listeners, and Event and Barrier on top of them. Builds on :mod:`pyprocsync.core`;
imports nothing from :mod:`pyprocsync.tools`.
"""
