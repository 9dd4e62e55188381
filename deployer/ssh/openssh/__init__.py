"""OpenSSH's ``ssh`` as the transport of a push: ControlMasters per hop, driven over their mux sockets.

Deployer still dials the first hop, judges every host key by its own rules and holds the keys in
memory; OpenSSH carries the bytes (``transport`` is the entry point, ``connection`` the
Executor). paramiko stays the transport where no OpenSSH 8.5 or newer is installed.
"""
