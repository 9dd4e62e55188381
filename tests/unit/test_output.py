"""What people see: a redrawn bar on a terminal, timestamped lines in CI, JSON on stdout."""

from __future__ import annotations

import io
import json
import re

from deployer.output import Masker, Reporter, emit_json, human_size


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


def test_masker_masks_text_documents_and_every_line_of_a_multiline_value() -> None:
    masker = Masker(["s3cr3t-value", "line-one-x\nline-two-y", "", "   "])
    assert masker.text("token=s3cr3t-value;") == "token=***;"
    assert masker.text("line-one-x\nline-two-y") == "***"  # whole
    assert masker.text("got line-two-y only") == "got *** only"  # line by line
    assert (
        masker.text("nothing here   at all") == "nothing here   at all"
    )  # blank values mask nothing
    document = {"error": "x s3cr3t-value", "targets": [{"out": ["line-one-x"], "n": 3, "ok": True}]}
    assert masker.data(document) == {
        "error": "x ***",
        "targets": [{"out": ["***"], "n": 3, "ok": True}],
    }
    out = io.StringIO()
    emit_json(document, out, masker)
    assert "s3cr3t" not in out.getvalue() and json.loads(out.getvalue())["error"] == "x ***"


def test_the_longest_value_wins_where_one_holds_another() -> None:
    masker = Masker(["abc", "abcdef"])
    assert masker.text("abcdefgh abc") == "***gh ***"


def test_a_value_split_between_chunks_of_a_stream_is_masked() -> None:
    masker = Masker(["s3cr3t-value"])
    for cut in range(1, 12):
        stream = masker.stream()
        data = b"before s3cr3t-value after\n"
        pieces = [data[: 7 + cut], data[7 + cut :]]
        written = b"".join(stream.feed(piece) for piece in pieces) + stream.close()
        assert written == b"before *** after\n", cut
    stream = masker.stream()
    assert stream.feed(b"ends with s3cr") == b"ends with "  # held back: it may be the value
    assert stream.feed(b"ew") == b"s3crew"  # it was not
    assert stream.feed(b"s3") == b"" and stream.close() == b"s3"


def test_reporter_lines_and_bars_go_through_its_masker() -> None:
    stream = io.StringIO()
    reporter = Reporter(stream, tty=True, masker=Masker(["hunter2-xyz"]))
    reporter.target("web1", "before| password=hunter2-xyz")
    reporter.progress("hunter2-xyz", "upload", 10)(10)
    assert "hunter2" not in stream.getvalue() and "before| password=***" in stream.getvalue()
