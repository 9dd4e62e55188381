"""paramiko's eager import of invoke is deferred, and ssh_config's Match exec still works."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
import deployer.ssh.connection, deployer.ssh.ssh_config
assert "invoke.vendor" not in sys.modules, "invoke was loaded by importing paramiko"
import paramiko
config = paramiko.SSHConfig.from_text("Match exec true\\n  User matched\\n")
assert config.lookup("somehost")["user"] == "matched"
assert "invoke.vendor" in sys.modules
print("ok")
"""


def test_invoke_loads_only_when_match_exec_needs_it() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
