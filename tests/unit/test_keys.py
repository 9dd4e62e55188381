"""Private keys in every form CI variables produce, checked against the real ssh-keygen."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest

from deployer.errors import PrivateKeyError
from deployer.keys import (
    load_private_key,
    normalize_key_text,
    public_key_line,
    read_private_key_file,
)

PASSPHRASE = "correct horse"

FORMS = [
    ("ed25519", None),
    ("ecdsa", "PEM"),
    ("ecdsa", "PKCS8"),
    ("rsa", "PEM"),
    ("rsa", "PKCS8"),
    ("rsa", None),
]


def keygen(tmp_path: Path, kind: str, fmt: str | None, passphrase: str = "") -> Path:
    path = tmp_path / f"{kind}-{fmt or 'openssh'}-{'enc' if passphrase else 'plain'}"
    if path.exists():
        return path
    cmd = ["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-C", "", "-f", str(path)]
    if kind == "rsa":
        cmd += ["-b", "2048"]
    if fmt:
        cmd += ["-m", fmt]
    subprocess.run(cmd, check=True)
    return path


def expected_public(path: Path) -> str:
    return " ".join(path.with_name(path.name + ".pub").read_text().split()[:2])


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keys are generated once per module: ssh-keygen -t rsa is slow."""
    return tmp_path_factory.mktemp("keys")


MANGLES = {
    "as-is": lambda t: t,
    "crlf": lambda t: t.replace("\n", "\r\n"),
    "no-final-newline": lambda t: t.rstrip("\n"),
    "spaces": lambda t: t.strip().replace("\n", " "),
    "base64": lambda t: base64.b64encode(t.encode()).decode(),
    "base64-wrapped": lambda t: base64.encodebytes(t.encode()).decode(),
    "quoted": lambda t: f'"{t}"',
    "escaped-newlines": lambda t: t.replace("\n", "\\n"),
}


@pytest.mark.parametrize(("kind", "fmt"), FORMS)
@pytest.mark.parametrize("mangle", sorted(MANGLES))
def test_every_form_and_mangling_loads_the_same_key(
    key_dir: Path, kind: str, fmt: str | None, mangle: str
) -> None:
    path = keygen(key_dir, kind, fmt)
    key = load_private_key(MANGLES[mangle](path.read_text()))
    assert public_key_line(key) == expected_public(path)


@pytest.mark.parametrize(
    ("kind", "fmt"), [("ed25519", None), ("ecdsa", "PEM"), ("rsa", "PEM"), ("rsa", "PKCS8")]
)
def test_encrypted_keys(tmp_path: Path, kind: str, fmt: str | None) -> None:
    path = keygen(tmp_path, kind, fmt, PASSPHRASE)
    text = path.read_text()
    for variant in (text, MANGLES["spaces"](text), MANGLES["base64"](text)):
        assert public_key_line(load_private_key(variant, passphrase=PASSPHRASE)) == expected_public(
            path
        )
    with pytest.raises(PrivateKeyError, match="is encrypted — set SSH_PRIVATE_KEY_PASSPHRASE"):
        load_private_key(text)
    with pytest.raises(PrivateKeyError, match="passphrase for SSH_PRIVATE_KEY is wrong"):
        load_private_key(text, passphrase="nope nope")


def test_a_passphrase_for_a_plain_key_is_ignored(tmp_path: Path) -> None:
    path = keygen(tmp_path, "ed25519", None)
    assert public_key_line(
        load_private_key(path.read_text(), passphrase="unused")
    ) == expected_public(path)


def test_public_key_pasted(tmp_path: Path) -> None:
    path = keygen(tmp_path, "ed25519", None)
    public = path.with_name(path.name + ".pub").read_text()
    with pytest.raises(
        PrivateKeyError, match=r"holds a public key \(ssh-ed25519 …\) — paste the private key"
    ):
        load_private_key(public)
    with pytest.raises(PrivateKeyError, match="holds a public key"):
        load_private_key(base64.b64encode(public.encode()).decode())


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "is empty"),
        ("   \n", "is empty"),
        ("hello world", "is not a private key deployer can read"),
        ("PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\n", "puttygen"),
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----",
            "cannot be parsed",
        ),
    ],
)
def test_unusable_values(value: str, message: str) -> None:
    with pytest.raises(PrivateKeyError, match=message):
        load_private_key(value, source="SSH_PRIVATE_KEY")


def test_errors_never_contain_key_material(tmp_path: Path) -> None:
    path = keygen(tmp_path, "rsa", "PEM", PASSPHRASE)
    text = path.read_text()
    body = [
        line
        for line in text.splitlines()
        if line and not line.startswith(("-----", "Proc-Type", "DEK-Info"))
    ]
    truncated = "\n".join(text.splitlines()[:5])
    for value, passphrase in ((text, None), (text, "wrong pass"), (truncated, None)):
        with pytest.raises(PrivateKeyError) as caught:
            load_private_key(value, passphrase=passphrase)
        rendered = str(caught.value) + repr(caught.value)
        assert not any(line in rendered for line in body)
        error = caught.value
        assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_truncated_key_says_so(tmp_path: Path) -> None:
    path = keygen(tmp_path, "ed25519", None)
    with pytest.raises(PrivateKeyError, match="cut short"):
        load_private_key("\n".join(path.read_text().splitlines()[:3]))


def test_key_file_and_nothing_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = keygen(tmp_path, "ed25519", None)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("TMPDIR", str(work))
    assert public_key_line(read_private_key_file(path)) == expected_public(path)
    load_private_key(base64.b64encode(path.read_text().encode()).decode())
    assert os.listdir(work) == []
    with pytest.raises(PrivateKeyError, match="cannot read key file"):
        read_private_key_file(tmp_path / "missing")


def test_normalize_rebuilds_flattened_legacy_pem_headers(tmp_path: Path) -> None:
    path = keygen(tmp_path, "rsa", "PEM", PASSPHRASE)
    text = path.read_text()
    assert "DEK-Info:" in text
    assert normalize_key_text(text.strip().replace("\n", " ")) == normalize_key_text(text)
