"""What people see: a redrawn bar on a terminal, timestamped lines in CI, JSON on stdout."""

from __future__ import annotations

import io
import json
import re

from deployer.output import Reporter, emit_json, human_size


def test_terminal_gets_a_bar_redrawn_in_place() -> None:
    stream = io.StringIO()
    reporter = Reporter(stream, tty=True)
    advance = reporter.progress("web1", "upload", 4 << 20)
    for _ in range(4):
        advance(1 << 20)
    text = stream.getvalue()
    assert "\r[web1] [########################] upload 100.0% 4.0 MiB/4.0 MiB" in text
    assert text.endswith("\n") and "\x1b[K" in text
    reporter.line("done")
    assert not re.search(r"^\d{4}-\d\d-\d\dT", stream.getvalue().splitlines()[-1])


def test_ci_gets_plain_timestamped_lines_without_carriage_returns() -> None:
    stream = io.StringIO()
    reporter = Reporter(stream, tty=False)
    reporter.target("web1", "switched current -> releases/x")
    advance = reporter.progress("web1", "upload", 100)
    advance(100)
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \[web1\] switched current -> releases/x\n", text
    )


def test_json_document_and_sizes() -> None:
    out = io.StringIO()
    emit_json({"ok": True, "targets": []}, out)
    assert json.loads(out.getvalue()) == {"ok": True, "targets": []}
    assert (
        human_size(1536) == "1.5 KiB"
        and human_size(12) == "12 B"
        and human_size(3 << 30) == "3.0 GiB"
    )
