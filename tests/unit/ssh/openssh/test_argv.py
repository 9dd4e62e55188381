"""The OpenSSH path's command lines, checked by the real ssh client's own parser (ssh -G)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from deployer.ssh.openssh.argv import (
    HOST_KEY_ALGORITHMS,
    MasterSpec,
    config_word,
    host_key_algorithms,
    master_argv,
    remote_command,
    stop_command,
)
from deployer.ssh.route import Endpoint


def ssh_binary() -> str:
    path = shutil.which("ssh")
    if path is None:  # the OpenSSH client is part of the test setup (./dev setup)
        pytest.fail(
            "these tests need OpenSSH's ssh (apt-get install openssh-client)", pytrace=False
        )
    return path


def spec(**changes: object) -> MasterSpec:
    values: dict[str, object] = {
        "ssh": ssh_binary(),
        "hop": Endpoint("deploy", "host.example", 2222),
        "control": "/tmp/deployer-ssh-x y%z/c1",
        "agent": '/tmp/agent dir/"a".sock',
        "known_hosts_command": '/bin/sh -c \'echo "$0"\' "/opt/my dir/100%%/x" %t %K %H',
        "host_key_algorithms": host_key_algorithms(["ecdsa-sha2-nistp256"]),
        "timeout": 7.4,
    }
    values.update(changes)
    return MasterSpec(**values)  # type: ignore[arg-type]


def resolved(argv: list[str]) -> dict[str, str]:
    """What ssh makes of a master's command line: `ssh -G` prints its whole configuration."""
    probe = [argv[0], "-G", *argv[argv.index("-N") + 1 :]]
    done = subprocess.run(
        probe, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, done.stderr
    return dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)


def test_ssh_reads_every_option_as_meant() -> None:
    config = resolved(master_argv(spec()))
    assert config["user"] == "deploy" and config["port"] == "2222"
    assert config["hostname"] == "host.example"
    assert config["proxycommand"] == "-"  # the connection is the socket on stdin and stdout
    assert config["controlmaster"] == "true" and config["controlpersist"] == "no"
    assert config["controlpath"] == "/tmp/deployer-ssh-x y%z/c1"  # spaces and % survive
    assert config["identityagent"] == '/tmp/agent dir/"a".sock'
    assert config["identityfile"] == "none" and config["batchmode"] == "yes"
    assert config["stricthostkeychecking"] == "true"
    assert config["userknownhostsfile"] == "/dev/null"
    assert config["globalknownhostsfile"] == "/dev/null"
    assert config["hostkeyalias"] == "deployer-hop"
    assert config["hostkeyalgorithms"].split(",")[0] == "ecdsa-sha2-nistp256"
    assert config["kexalgorithms"].startswith("curve25519-sha256,")
    assert config["ciphers"].startswith("aes128-gcm@openssh.com,aes256-gcm@openssh.com,")
    assert config["connecttimeout"] == "7"
    assert config["serveraliveinterval"] == "15" and config["serveralivecountmax"] == "3"
    assert config["forwardagent"] == "no" and config["permitlocalcommand"] == "no"


def test_the_known_hosts_command_reaches_ssh_as_given() -> None:
    command = resolved(master_argv(spec()))["knownhostscommand"]
    assert command == '/bin/sh -c \'echo "$0"\' "/opt/my dir/100%%/x" %t %K %H'


def test_a_name_ssh_would_expand_is_refused() -> None:
    with pytest.raises(ValueError, match="would be expanded by ssh"):
        config_word("/tmp/${HOME}/c1")
    assert config_word("/opt/${x}/python3", expanded=False) == '"/opt/${x}/python3"'


def test_the_destination_can_never_be_an_option() -> None:
    argv = master_argv(spec(hop=Endpoint("deploy", "-oProxyCommand=x", 22)))
    assert argv[-2:] == ["--", "-oProxyCommand=x"]


def test_known_host_key_types_go_first_and_nothing_else_is_offered() -> None:
    assert host_key_algorithms([]).split(",") == list(HOST_KEY_ALGORITHMS)
    assert host_key_algorithms(["rsa-sha2-512", "rsa-sha2-256"]).split(",")[:3] == [
        "rsa-sha2-512", "rsa-sha2-256", "ssh-ed25519"
    ]  # fmt: skip
    assert "ssh-rsa" not in host_key_algorithms(["ssh-rsa"]).split(",")  # SHA-1: never


def run_sh(command: str) -> subprocess.CompletedProcess[str]:
    """Run a remote command line as sshd would: the login shell with -c."""
    return subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=30)


def test_a_command_reports_its_process_group_first_then_runs_as_given() -> None:
    done = run_sh(remote_command('echo "it\'s $0"; exit 3', report_group=True))
    first, rest = done.stdout.split("\n", 1)
    assert int(first) == os.getpgrp()  # the child shell is in this process's group
    assert rest == "it's /bin/sh\n" and done.returncode == 3


def test_a_command_without_a_limit_runs_unwrapped() -> None:
    assert remote_command("echo hi", report_group=False) == "/bin/sh -c 'echo hi'"
    assert run_sh(remote_command("echo hi", report_group=False)).stdout == "hi\n"


def test_stop_command_signals_the_group() -> None:
    assert stop_command(4242, "TERM") == "kill -TERM -4242"
