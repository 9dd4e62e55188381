#!/usr/bin/env python3
"""deployer push vs plain OpenSSH, through one jump host + reverse tunnel, over emulated WAN links.

    python bench/run.py --quick                    # a few minutes: small corpora, two profiles
    python bench/run.py                            # the full run (half an hour or more)
    python bench/run.py --profiles 40ms-100m --corpora small,src --json out.json

Topology (as root, the default ``--net netns``): two network namespaces joined by a veth pair.
The client namespace plays the CI runner (deployer, ssh, rsync, scp, tar run there). The other
holds the "internet side": bench/relay.py (one-way delay RTT/2 per direction), a jump sshd, N
target sshd's (each in a private mount namespace, so every target has its own deploy directory at
the same path) and one plain ``ssh -N -R`` reverse tunnel per target into the jump host. The rate
cap is the kernel's ``tbf`` qdisc on both ends of the veth (``--shaper tbf``) or the relay's own
token bucket (``--shaper relay``). The tunnels' hop stays on loopback; only CI -> jump is the WAN.

``--net loopback`` (no root needed) runs everything on 127.0.0.1 with the relay doing delay and
rate. Every method is verified after each run (file list, sizes and sha256 of every file), so a
broken transfer cannot win. Cleanup: every process started here is stopped by pid/process group,
the namespaces created here are deleted.

This file is the command line: the options, the record of the environment, ``outer`` (creates the
namespaces and the veth, re-runs this script inside the server namespace) and ``inner`` (the
measurements and the report). The parts: bench/push_config.py (methods, profiles, corpus sets),
bench/push_topology.py (servers, tunnels, the shaped link), bench/push_methods.py (each method run,
verified and recorded), bench/push_report.py (tables and goals), bench/processes.py (timed runs).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

# Run as a script (`python bench/run.py`, `sudo .venv/bin/python bench/run.py`), Python puts bench/
# on sys.path, not the repository root: the root makes `bench.*` and this checkout's `deployer`
# importable (also in the server namespace, where this script runs again).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import corpora
from bench.processes import json_object, kill_group, run_checked
from bench.push_config import (
    ADAPT_LEVELS,
    CACHE,
    DEPLOYER,
    DEPLOYER_LINKED,
    EXTRA_METHODS,
    FULL_CORPORA,
    FULL_PROFILES,
    METHODS,
    QUICK_CORPORA,
    QUICK_PROFILES,
    REBUILD,
    REDEPLOY,
    REPO,
    RSYNC,
    SCP,
    TAR,
    TARZSTD,
    TINY,
    fixed_zstd,
    parse_profile,
)
from bench.push_methods import Bench
from bench.push_report import report
from bench.push_topology import Link, Topology


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, with the defaults of a full or --quick run filled in (profiles parsed)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small corpora, two profiles, fewer targets: a few minutes",
    )
    parser.add_argument(
        "--profiles",
        help=f"comma-separated RTTms-RATE{{m,g}} (default {FULL_PROFILES}; quick {QUICK_PROFILES})",
    )
    parser.add_argument(
        "--corpora", help="comma-separated of small,src,big (default all; full mode adds huge)"
    )
    parser.add_argument("--targets", help="parallel target counts (default 1,10,20; quick 1,5)")
    parser.add_argument(
        "--parallel-corpus", default="src", help="what the parallel-targets runs deploy (src)"
    )
    parser.add_argument(
        "--no-redeploy", action="store_true", help="skip the 1 %% redeploy and rebuild runs"
    )
    parser.add_argument(
        "--no-adapt",
        action="store_true",
        help="skip the zstd adaptation check (fixed levels next to the adaptive default, src)",
    )
    parser.add_argument("--no-parallel", action="store_true", help="skip the parallel-targets runs")
    parser.add_argument("--no-memory", action="store_true", help="skip the 1 GiB peak-memory run")
    parser.add_argument(
        "--methods", help=f"comma-separated subset of: {', '.join(METHODS + EXTRA_METHODS)}"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell (scp: always one)")
    parser.add_argument(
        "--stat", choices=("median", "min"), default="median", help="how repeats are summarized"
    )
    parser.add_argument(
        "--scp-files", type=int, default=0, help="scp subset size (default 100; quick 30)"
    )
    parser.add_argument(
        "--net",
        choices=("netns", "loopback"),
        default="netns" if os.geteuid() == 0 else "loopback",
        help="netns: client and servers in two namespaces joined by a shaped veth (root; default "
        "as root); loopback: everything on 127.0.0.1, the relay does delay and rate",
    )
    parser.add_argument(
        "--shaper", choices=("tbf", "relay"), default=None, help="rate cap (default tbf with netns)"
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=0,
        help="time budget; later runs are skipped (default 30 quick, 240 full)",
    )
    parser.add_argument(
        "--json", dest="json_out", type=Path, help="write every result as JSON here"
    )
    parser.add_argument("--markdown", type=Path, help="also write the tables as Markdown here")
    parser.add_argument(
        "--keep-work", action="store_true", help="keep bench/.cache/run-* (logs) afterwards"
    )
    args = parser.parse_args(argv)
    args.profiles = [
        parse_profile(p)
        for p in (args.profiles or (QUICK_PROFILES if args.quick else FULL_PROFILES)).split(",")
    ]
    specs = QUICK_CORPORA if args.quick else FULL_CORPORA
    wanted = (args.corpora or ("small,src,big" if args.quick else "small,src,big,huge")).split(",")
    args.corpora = [c.strip() for c in wanted if c.strip()]
    unknown = [c for c in args.corpora if c not in specs]
    if unknown:
        parser.error(f"unknown corpus {unknown[0]!r} (choose from {', '.join(specs)})")
    args.specs = specs
    args.targets = sorted(
        {int(n) for n in (args.targets or ("1,5" if args.quick else "1,10,20")).split(",")}
    )
    args.methods = [m.strip() for m in args.methods.split(",")] if args.methods else list(METHODS)
    args.scp_files = args.scp_files or (30 if args.quick else 100)
    args.shaper = args.shaper or ("tbf" if args.net == "netns" else "relay")
    if args.net == "loopback" and args.shaper == "tbf":
        parser.error("--shaper tbf needs --net netns")
    args.max_minutes = args.max_minutes or (30 if args.quick else 240)
    return args


def source_fingerprint() -> str:
    """sha256 over deployer/**/*.py: says whether the code under test changed during the run."""
    digest = hashlib.sha256()
    root = REPO / "deployer"
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def git_head() -> str:
    """The checked-out commit, read from .git directly (no git command runs here)."""
    try:
        gitdir = REPO / ".git"
        if gitdir.is_file():  # a worktree: .git names its own gitdir, refs live in the common one
            gitdir = (REPO / gitdir.read_text().strip().removeprefix("gitdir: ")).resolve()
        common = gitdir
        if (gitdir / "commondir").is_file():
            common = (gitdir / (gitdir / "commondir").read_text().strip()).resolve()
        head = (gitdir / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            loose = common / ref
            if loose.exists():
                return loose.read_text().strip()[:12]
            for line in (common / "packed-refs").read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0][:12]
            return "?"
        return head[:12]
    except OSError:
        return "?"


def environment() -> dict[str, Any]:
    """Machine, kernel and tool versions, load and the code under test, recorded with the results."""
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    rsync = subprocess.run(
        ["rsync", "--version"], capture_output=True, text=True
    ).stdout.splitlines()[0]
    try:
        import paramiko

        pm = str(paramiko.__version__)
    except ImportError:
        pm = "?"
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssh": ssh,
        "rsync": rsync,
        "paramiko": pm,
        "loadavg_start": os.getloadavg(),
        "git_head": git_head(),
        "deployer_source_start": source_fingerprint(),
    }


def inner(args: argparse.Namespace, net: dict[str, str] | None) -> int:
    """Everything on the "internet side" (inside the server namespace when there is one)."""
    started = time.monotonic()
    CACHE.mkdir(exist_ok=True)
    work = CACHE / f"run-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    logdir = work / "logs"
    logdir.mkdir()
    print(f"bench: building corpora in {CACHE / 'corpora'}", file=sys.stderr, flush=True)
    corpus_map = {c: corpora.build(args.specs[c], CACHE / "corpora") for c in args.corpora}
    parallel_name = args.parallel_corpus if args.parallel_corpus in args.specs else "src"
    if not args.no_parallel and parallel_name not in corpus_map:
        corpus_map[parallel_name] = corpora.build(args.specs[parallel_name], CACHE / "corpora")
    changed = {}
    if not args.no_redeploy:
        for c in ("small", "src"):
            if c in args.corpora:
                changed[c] = corpora.changed_copy(corpus_map[c], CACHE / "corpora")
    corpus_map["tiny"] = corpora.build(TINY, CACHE / "corpora")
    for corpus in corpus_map.values():
        print(f"bench: corpus {corpus.label}", file=sys.stderr)
    n_targets = max(args.targets) if not args.no_parallel else 1
    topo = Topology(
        work, n_targets, net["server_ip"] if net else "127.0.0.1", net["client_ns"] if net else None
    )
    link = Link(topo, args, net, logdir)
    state: dict[str, Any] = {
        "command": shlex.join(
            ["python", "bench/run.py", *(a for a in sys.argv[1:] if a != "--_inner")]
        ),
        "environment": environment(),
        "net": args.net,
        "shaper": args.shaper,
        "profiles": [],
    }
    bench: Bench | None = None
    try:
        print(
            f"bench: starting jump + {n_targets} target sshd(s) and tunnels ({args.net}, rate cap: {args.shaper})",
            file=sys.stderr,
            flush=True,
        )
        topo.start()
        link.start_servers()
        bench = Bench(topo, args, logdir)
        state["deployer_has_parallel"] = bench.has_parallel
        for profile in args.profiles:
            prof: dict[str, Any] = {
                "key": profile.key,
                "label": profile.label,
                "rtt_ms": profile.rtt_ms,
                "rate_mbit": profile.rate_mbit,
                "rate_bytes": profile.rate_bytes,
            }
            state["profiles"].append(prof)
            print(f"bench: profile {profile.label}", file=sys.stderr, flush=True)
            prof["link"] = link.apply(profile)
            print(f"  link check: {json.dumps(prof['link'])}", file=sys.stderr, flush=True)
            prof["ssh_setup"] = bench.ssh_setup()
            # every repetition runs each method once, round-robin, so load bursts hit all alike
            deployers = [DEPLOYER, *(m for m in EXTRA_METHODS if m in args.methods)]
            for _ in range(5):
                for method in (*deployers, TAR):
                    bench.full(profile, corpus_map["tiny"], method, prof["ssh_setup"], "latency")
            for c in args.corpora:
                if c == "huge":
                    continue
                for rep in range(args.repeat):
                    for method in args.methods:
                        if method != SCP or rep == 0:  # scp: one (slow) run, extrapolated
                            bench.full(profile, corpus_map[c], method, prof["ssh_setup"])
            for c, v2 in changed.items():
                for _ in range(args.repeat):
                    for scenario in (REDEPLOY, REBUILD):
                        for method in (DEPLOYER, DEPLOYER_LINKED, RSYNC):
                            if method == DEPLOYER_LINKED and (
                                scenario == REBUILD or "--link-unchanged" not in bench.push_help
                            ):
                                continue
                            bench.redeploy(profile, corpus_map[c], v2, method, scenario)
            if not args.no_adapt and "src" in corpus_map and "--compress " in bench.push_help:
                for _ in range(args.repeat):
                    for method in (DEPLOYER, *(fixed_zstd(n) for n in ADAPT_LEVELS)):
                        bench.full(profile, corpus_map["src"], method, prof["ssh_setup"], "adapt")
            if not args.no_parallel:
                for count in args.targets:
                    for _ in range(args.repeat):
                        for method in (*deployers, TARZSTD):
                            bench.parallel(profile, corpus_map[parallel_name], count, method)
            fastest = max(args.profiles, key=lambda p: p.rate_mbit)
            if "huge" in corpus_map and not args.no_memory and profile == fastest:
                for method in (DEPLOYER, TAR):
                    bench.full(profile, corpus_map["huge"], method, prof["ssh_setup"], "memory")
    except KeyboardInterrupt:
        print("bench: interrupted — reporting what was measured", file=sys.stderr)
    except Exception:
        traceback.print_exc()
        print("bench: error — reporting what was measured", file=sys.stderr)
    finally:
        link.stop()
        topo.stop()
    results = bench.results if bench else []
    state["environment"]["loadavg_end"] = os.getloadavg()
    state["environment"]["deployer_source_end"] = source_fingerprint()
    state["elapsed_minutes"] = round((time.monotonic() - started) / 60, 1)
    text, goals = report(state, results, corpus_map, args)
    env = state["environment"]
    notes = (
        f"Command: `{state['command']}` (as root). "
        f"Environment: {env['cpus']} CPUs, kernel {env['kernel']}, {env['openssh']}, {env['rsync']}, "
        f"paramiko {env['paramiko']}, Python {env['python']}; load average at start "
        f"{env['loadavg_start'][0]:.2f}, at end {env['loadavg_end'][0]:.2f}; {state['elapsed_minutes']} min. "
        f"Cells are wall-clock seconds of the whole command (connection, transfer, remote work), "
        f"{args.stat} of {args.repeat} run(s), each verified (file list, sizes, sha256). "
        f"deployer at commit {env['git_head']}, source fingerprint {env['deployer_source_start']}"
        + (
            ""
            if env["deployer_source_end"] == env["deployer_source_start"]
            else f" at the start and {env['deployer_source_end']} at the end (the code changed during the run)"
        )
        + "."
    )
    print("\n" + text + "\n" + notes)
    if args.json_out:
        payload = {
            **state,
            "goals": goals,
            "results": [asdict(r) for r in results],
            "corpora": {
                k: {"label": c.label, "files": c.files, "bytes": c.bytes}
                for k, c in corpus_map.items()
            },
        }
        args.json_out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    if args.markdown:
        args.markdown.write_text(text + "\n" + notes + "\n")
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"bench: logs kept in {work}", file=sys.stderr)
    return 0


def outer(args: argparse.Namespace, argv: list[str]) -> int:
    """Create the two namespaces and the shaped veth, run the benchmark inside, always clean up."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
        print("bench: --net netns needs root, ip and tc; use --net loopback", file=sys.stderr)
        return 2
    tag = f"dbench{os.getpid()}"
    net = {
        "client_ns": f"{tag}c",
        "server_ns": f"{tag}s",
        "client_dev": f"dbc{os.getpid()}",
        "server_dev": f"dbs{os.getpid()}",
        "client_ip": "10.231.0.1",
        "server_ip": "10.231.0.2",
    }
    created: list[str] = []
    proc: subprocess.Popen[bytes] | None = None
    try:
        for ns in (net["client_ns"], net["server_ns"]):
            run_checked(["ip", "netns", "add", ns])
            created.append(ns)
            run_checked(["ip", "-n", ns, "link", "set", "lo", "up"])
        # create the pair directly inside the namespaces: nothing appears in the host's namespace
        run_checked(
            [
                "ip",
                "-n",
                net["client_ns"],
                "link",
                "add",
                net["client_dev"],
                "type",
                "veth",
                "peer",
                "name",
                net["server_dev"],
                "netns",
                net["server_ns"],
            ]
        )
        for side in ("client", "server"):
            ns, dev = net[f"{side}_ns"], net[f"{side}_dev"]
            run_checked(["ip", "-n", ns, "addr", "add", f"{net[f'{side}_ip']}/30", "dev", dev])
            run_checked(["ip", "-n", ns, "link", "set", dev, "up"])
        env = {**os.environ, "DEPLOYER_BENCH_NET": json.dumps(net)}
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                net["server_ns"],
                sys.executable,
                str(Path(__file__).resolve()),
                *argv,
            ],
            env=env,
            start_new_session=True,
        )
        try:
            return proc.wait(timeout=args.max_minutes * 60 + 900)
        except KeyboardInterrupt:
            # SIGTERM, not SIGINT: a background job may have inherited SIGINT as ignored
            kill_group(proc.pid, signal.SIGTERM)
            return proc.wait(timeout=120)
    finally:
        if proc is not None and proc.poll() is None:
            kill_group(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            kill_group(proc.pid)
        for ns in created:
            # anything still running in a namespace we created is ours: stop it by pid, then delete
            pids = subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM: clean up and report like Ctrl-C


def main(argv: list[str] | None = None) -> int:
    """Parse the options; as root (--net netns) run outer(), else (or inside the namespace) inner()."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    net_env = os.environ.get("DEPLOYER_BENCH_NET")
    if args.net == "netns" and not net_env:
        return outer(args, argv)
    return inner(args, json_object(net_env) if net_env else None)


if __name__ == "__main__":
    sys.exit(main())
