"""What is built on the public API: the command line, the benchmark, the embedded server,
status reading, ACL rules and the pytest plugin.
"""
