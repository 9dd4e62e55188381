"""The benchmarks: `deployer push` and `deployer tunnel` against plain OpenSSH (see bench/README.md).

Not part of the installed package. The entry points are scripts run from a checkout:
bench/run.py, bench/tunnel.py, bench/proxy.py and bench/relay.py (the link emulator, also run
as a child process). Each puts the repository root on sys.path, so the modules import one
another as ``bench.*`` and the test helpers as ``tests.integration.*``.
"""
