"""OpenSSH's ``ssh`` as the SSH client of a push: ControlMasters per hop, driven over their mux sockets.

Deployer still dials the first hop, judges every host key by its own rules and holds the keys in
memory; OpenSSH carries the bytes (``client`` is the entry point, ``connection`` the
Executor). paramiko stays the client where no OpenSSH 8.5 or newer is installed.
"""
