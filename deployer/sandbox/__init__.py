"""The local sandbox: a jump sshd, a target sshd and an ssh -R tunnel on loopback.

Used by `deployer sandbox` (the demo), the integration tests and the benchmarks.
"""
