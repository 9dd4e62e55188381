"""The local sandbox: a jump sshd, a target sshd and an ssh -R tunnel on loopback, for the demo, tests and benchmarks."""
