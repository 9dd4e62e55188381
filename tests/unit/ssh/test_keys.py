"""Private keys in every form CI variables produce, checked against the real ssh-keygen."""

from __future__ import annotations

import base64
import builtins
import io
import os
import re
import shutil
import struct
import subprocess
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

import deployer.ssh.keys
from deployer.errors import ExitCode, PrivateKeyError
from deployer.ssh.keys import (
    load_private_key,
    normalize_key_text,
    public_key_line,
    read_private_key_file,
)

PASSPHRASE = "correct horse battery"
UNREADABLE = (
    "SSH_PRIVATE_KEY is not a private key deployer can read (expected an OpenSSH or PEM block) — "
)
ENCRYPTED = "SSH_PRIVATE_KEY is encrypted — set SSH_PRIVATE_KEY_PASSPHRASE (or use an unencrypted deploy key)"
WRONG_PASSPHRASE = "SSH_PRIVATE_KEY could not be decrypted: the passphrase is wrong — check SSH_PRIVATE_KEY_PASSPHRASE"
USE_ED25519 = "generate an ed25519 key (ssh-keygen -t ed25519)"
DSA = f"SSH_PRIVATE_KEY is a DSA (ssh-dss) key, which OpenSSH no longer accepts — {USE_ED25519}"


def public_message(kind: str) -> str:
    return f"SSH_PRIVATE_KEY holds a public key ({kind} …) — paste the private key (the file without .pub)"


# --------------------------------------------------------------------------- keys from ssh-keygen


@dataclass(frozen=True)
class Form:
    """One way ssh-keygen writes a private key."""

    kind: str
    bits: int | None
    fmt: str  # "openssh" (the default), "PEM" (PKCS#1 / SEC1) or "PKCS8"

    @property
    def id(self) -> str:
        return f"{self.kind}{self.bits or ''}-{self.fmt}"

    def label(self, encrypted: bool) -> str:
        if self.fmt == "openssh":
            return "OPENSSH PRIVATE KEY"
        if self.fmt == "PKCS8":
            return "ENCRYPTED PRIVATE KEY" if encrypted else "PRIVATE KEY"
        return {"rsa": "RSA PRIVATE KEY", "ecdsa": "EC PRIVATE KEY", "dsa": "DSA PRIVATE KEY"}[
            self.kind
        ]


FORMS = [
    Form("ed25519", None, "openssh"),
    *(Form("ecdsa", bits, fmt) for bits in (256, 384, 521) for fmt in ("openssh", "PEM", "PKCS8")),
    *(Form("rsa", 3072, fmt) for fmt in ("openssh", "PEM", "PKCS8")),
]


@dataclass(frozen=True)
class Generated:
    """A key file written by ssh-keygen and what ssh-keygen -y says its public half is."""

    path: Path
    text: str
    public: str
    passphrase: str | None


def body_lines(text: str) -> list[str]:
    """The secret lines of a key file: everything but BEGIN/END and PEM headers."""
    return [
        line
        for line in text.splitlines()
        if line.strip() and not line.startswith("-----") and ":" not in line
    ]


def ssh_keygen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh-keygen", *args], capture_output=True, text=True, timeout=60, check=False
    )


class KeyMaker:
    """Generates each key once (RSA 3072 is slow) and checks ssh-keygen wrote the intended format."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.made: dict[tuple[Form, bool], Generated] = {}

    def __call__(self, form: Form, encrypted: bool = False) -> Generated:
        if (form, encrypted) in self.made:
            return self.made[form, encrypted]
        path = self.folder / f"{form.id}-{'enc' if encrypted else 'plain'}"
        passphrase = PASSPHRASE if encrypted else None
        args = ["-q", "-t", form.kind, "-N", passphrase or "", "-C", "ci@example", "-f", str(path)]
        if form.bits:
            args += ["-b", str(form.bits)]
        if form.fmt != "openssh":
            args += ["-m", form.fmt]
        made = ssh_keygen(*args)
        if made.returncode != 0 and form.kind == "dsa":
            pytest.skip(f"this ssh-keygen cannot make DSA keys any more: {made.stderr.strip()}")
        assert made.returncode == 0, made.stderr
        text = path.read_text()
        assert text.startswith(f"-----BEGIN {form.label(encrypted)}-----\n")
        public = ssh_keygen("-y", "-P", passphrase or "", "-f", str(path))
        assert public.returncode == 0, public.stderr
        result = Generated(path, text, " ".join(public.stdout.split()[:2]), passphrase)
        self.made[form, encrypted] = result
        return result


@pytest.fixture(scope="module")
def keygen(tmp_path_factory: pytest.TempPathFactory) -> KeyMaker:
    return KeyMaker(tmp_path_factory.mktemp("keys"))


def assert_clean_error(error: PrivateKeyError, *secrets: str) -> None:
    """One line, our own class, no chained library exception, and no trace of the secret text."""
    assert type(error) is PrivateKeyError
    assert error.exit_code == ExitCode.KEY
    message = str(error)
    assert message and "\n" not in message and "\r" not in message
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    rendered = message + repr(error) + "".join(traceback.format_exception(error))
    for secret in secrets:
        lines = body_lines(secret)
        assert lines, "the test needs key material to look for"
        for line in lines:
            assert line.strip() not in rendered
        joined = "".join(line.strip() for line in lines)
        for start in range(0, max(len(joined) - 16, 1), 8):
            assert joined[start : start + 16] not in rendered


def load_error(
    value: str, passphrase: str | None = None, source: str = "SSH_PRIVATE_KEY"
) -> PrivateKeyError:
    with pytest.raises(PrivateKeyError) as caught:
        load_private_key(value, passphrase=passphrase, source=source)
    return caught.value


# --------------------------------------------------------------------------- manglings

MANGLES: dict[str, Callable[[str], str]] = {
    "as-is": lambda t: t,
    "crlf": lambda t: t.replace("\n", "\r\n"),
    "no-final-newline": lambda t: t.rstrip("\n"),
    "crlf-no-final-newline": lambda t: t.rstrip("\n").replace("\n", "\r\n"),
    "spaces": lambda t: t.strip().replace("\n", " "),
    "surrounding-whitespace": lambda t: f" \n\t {t}\n\n  ",
    "double-quoted": lambda t: f'"{t}"',
    "single-quoted-no-newline": lambda t: f"'{t.strip()}'",
    "escaped-newlines": lambda t: t.replace("\n", "\\n"),
    "base64": lambda t: base64.b64encode(t.encode()).decode(),
    "base64-wrapped": lambda t: base64.encodebytes(t.encode()).decode(),
    "base64-urlsafe-unpadded": lambda t: base64.urlsafe_b64encode(t.encode()).decode().rstrip("="),
    "base64-of-crlf": lambda t: base64.b64encode(t.replace("\n", "\r\n").encode()).decode(),
}


@pytest.mark.parametrize("mangle", list(MANGLES))
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
@pytest.mark.parametrize("form", FORMS, ids=lambda f: f.id)
def test_every_form_and_mangling_loads_the_same_key(
    keygen: KeyMaker, form: Form, encrypted: bool, mangle: str
) -> None:
    key = keygen(form, encrypted)
    loaded = load_private_key(MANGLES[mangle](key.text), passphrase=key.passphrase)
    assert public_key_line(loaded) == key.public


@pytest.mark.parametrize("mangle", list(MANGLES))
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
@pytest.mark.parametrize(
    "form",
    [Form("ed25519", None, "openssh"), Form("ecdsa", 384, "PEM"), Form("rsa", 3072, "PKCS8")],
    ids=lambda f: f.id,
)
def test_normalizing_gives_back_exactly_what_ssh_keygen_wrote(
    keygen: KeyMaker, form: Form, encrypted: bool, mangle: str
) -> None:
    # the legacy encrypted PEM headers (Proc-Type, DEK-Info) and the line width must survive
    key = keygen(form, encrypted)
    assert normalize_key_text(MANGLES[mangle](key.text)) == key.text


def test_legacy_encrypted_pem_headers_survive_flattening(keygen: KeyMaker) -> None:
    key = keygen(Form("rsa", 3072, "PEM"), encrypted=True)
    lines = key.text.splitlines()
    assert lines[1] == "Proc-Type: 4,ENCRYPTED" and lines[2].startswith("DEK-Info: AES-128-CBC,")
    flattened = normalize_key_text(MANGLES["spaces"](key.text)).splitlines()
    assert flattened[:4] == lines[:4] and flattened[3] == ""


def test_normalize_is_idempotent_and_leaves_other_text_alone() -> None:
    assert normalize_key_text("  hello world \r\n") == "hello world\n"
    assert normalize_key_text("") == ""
    pasted = "-----BEGIN OPENSSH PRIVATE KEY----- AAAA BBBB -----END OPENSSH PRIVATE KEY-----"
    once = normalize_key_text(pasted)
    assert (
        once == "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAABBBB\n-----END OPENSSH PRIVATE KEY-----\n"
    )
    assert normalize_key_text(once) == once


@pytest.mark.parametrize("form", FORMS, ids=lambda f: f.id)
def test_loaded_keys_sign_what_the_ssh_keygen_public_key_verifies(
    keygen: KeyMaker, form: Form
) -> None:
    """The private half works too, not just the public half (rsa with the sha2 algorithms)."""
    key = keygen(form)
    loaded = load_private_key(MANGLES["spaces"](key.text))
    key_type, blob = key.public.split()
    public = paramiko.PKey.from_type_string(key_type, base64.b64decode(blob))
    algorithms = ["rsa-sha2-256", "rsa-sha2-512"] if form.kind == "rsa" else [None]
    for algorithm in algorithms:
        signature = loaded.sign_ssh_data(b"release 42", algorithm)
        signature.rewind()
        assert public.verify_ssh_sig(b"release 42", signature)
        signature.rewind()
        assert not public.verify_ssh_sig(b"release 43", signature)


def test_public_key_line_and_repr(keygen: KeyMaker) -> None:
    key = keygen(Form("rsa", 3072, "PEM"))
    loaded = load_private_key(key.text)
    assert public_key_line(loaded) == key.public
    assert public_key_line(loaded, "deploy@ci") == f"{key.public} deploy@ci"
    assert public_key_line(loaded).startswith("ssh-rsa AAAA")
    for line in body_lines(key.text):
        assert line not in repr(loaded)


# --------------------------------------------------------------------------- passphrases


ENCRYPTED_FORMS = [
    Form("ed25519", None, "openssh"),
    Form("ecdsa", 256, "openssh"),
    Form("ecdsa", 521, "PEM"),
    Form("ecdsa", 384, "PKCS8"),
    Form("rsa", 3072, "openssh"),
    Form("rsa", 3072, "PEM"),
    Form("rsa", 3072, "PKCS8"),
]


@pytest.mark.parametrize("form", ENCRYPTED_FORMS, ids=lambda f: f.id)
def test_encrypted_key_without_passphrase(keygen: KeyMaker, form: Form) -> None:
    key = keygen(form, encrypted=True)
    for value in (key.text, MANGLES["spaces"](key.text), MANGLES["base64"](key.text)):
        for passphrase in (None, ""):
            error = load_error(value, passphrase=passphrase)
            assert str(error) == ENCRYPTED
            assert_clean_error(error, key.text)


@pytest.mark.parametrize("form", ENCRYPTED_FORMS, ids=lambda f: f.id)
def test_wrong_passphrase(keygen: KeyMaker, form: Form) -> None:
    key = keygen(form, encrypted=True)
    for wrong in ("nope nope", PASSPHRASE.upper(), PASSPHRASE + "x"):
        error = load_error(MANGLES["crlf"](key.text), passphrase=wrong)
        assert str(error) == WRONG_PASSPHRASE
        assert_clean_error(error, key.text)


def test_a_passphrase_from_a_file_variable_may_end_with_a_newline(keygen: KeyMaker) -> None:
    key = keygen(Form("ed25519", None, "openssh"), encrypted=True)
    assert public_key_line(load_private_key(key.text, passphrase=PASSPHRASE + "\n")) == key.public


@pytest.mark.parametrize(
    "form",
    [Form("ed25519", None, "openssh"), Form("ecdsa", 256, "PEM"), Form("rsa", 3072, "PKCS8")],
    ids=lambda f: f.id,
)
def test_a_passphrase_for_a_plain_key_is_ignored(keygen: KeyMaker, form: Form) -> None:
    key = keygen(form)
    assert public_key_line(load_private_key(key.text, passphrase="unused")) == key.public


def test_unsupported_openssh_cipher_names_it_and_its_fix_works(tmp_path: Path) -> None:
    path = tmp_path / "key"
    made = ssh_keygen(
        "-q", "-t", "ed25519", "-N", PASSPHRASE, "-Z", "chacha20-poly1305@openssh.com",
        "-f", str(path),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    text = path.read_text()
    assert str(load_error(text)) == ENCRYPTED
    error = load_error(text, passphrase=PASSPHRASE)
    assert str(error) == (
        "SSH_PRIVATE_KEY is encrypted with chacha20-poly1305@openssh.com, which deployer cannot"
        " decrypt — re-encrypt it with `ssh-keygen -p -Z aes256-ctr -f key`"
    )
    assert_clean_error(error, text)
    fix = re.search(r"`ssh-keygen (.*) -f key`", str(error))
    assert fix is not None
    fixed = ssh_keygen(*fix.group(1).split(), "-P", PASSPHRASE, "-N", PASSPHRASE, "-f", str(path))
    assert fixed.returncode == 0, fixed.stderr
    expected = " ".join(ssh_keygen("-y", "-P", PASSPHRASE, "-f", str(path)).stdout.split()[:2])
    assert public_key_line(load_private_key(path.read_text(), passphrase=PASSPHRASE)) == expected


# --------------------------------------------------------------------------- public keys pasted


@pytest.fixture(scope="module")
def public_keys(keygen: KeyMaker, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every way a public key gets pasted: .pub lines, RFC 4716, PKCS#8 and PKCS#1 blocks, certs."""
    ed = keygen(Form("ed25519", None, "openssh"))
    ec = keygen(Form("ecdsa", 384, "openssh"))
    rsa = keygen(Form("rsa", 3072, "openssh"))
    pub = {name: Path(f"{key.path}.pub") for name, key in (("ed", ed), ("ec", ec), ("rsa", rsa))}

    def export(path: Path, *fmt: str) -> str:
        exported = ssh_keygen("-e", *fmt, "-f", str(path))
        assert exported.returncode == 0, exported.stderr
        return exported.stdout

    rfc4716 = export(pub["ed"])
    assert rfc4716.startswith("---- BEGIN SSH2 PUBLIC KEY ----\n")
    ca = tmp_path_factory.mktemp("ca") / "ca"
    assert ssh_keygen("-q", "-t", "ed25519", "-N", "", "-f", str(ca)).returncode == 0
    signed = ssh_keygen("-q", "-s", str(ca), "-I", "ci", "-n", "deploy", str(pub["ed"]))
    assert signed.returncode == 0, signed.stderr
    return {
        "ed25519.pub": pub["ed"].read_text(),
        "ecdsa.pub": pub["ec"].read_text(),
        "rsa.pub": pub["rsa"].read_text(),
        "authorized_keys line": f'restrict,command="deploy" {pub["ed"].read_text()}',
        "base64 .pub": base64.b64encode(pub["ed"].read_bytes()).decode(),
        "rfc4716": rfc4716,
        "rfc4716 flattened": rfc4716.strip().replace("\n", " "),
        "rfc4716 five dashes": rfc4716.replace("---- ", "-----").replace(" ----", "-----"),
        "pkcs8 rsa": export(pub["rsa"], "-m", "PKCS8"),
        "pkcs8 ecdsa base64": base64.b64encode(export(pub["ec"], "-m", "PKCS8").encode()).decode(),
        "pkcs1 rsa": export(pub["rsa"], "-m", "PEM"),
        "certificate": Path(f"{ed.path}-cert.pub").read_text(),
    }


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("ed25519.pub", "ssh-ed25519"),
        ("ecdsa.pub", "ecdsa-sha2-nistp384"),
        ("rsa.pub", "ssh-rsa"),
        ("authorized_keys line", "ssh-ed25519"),
        ("base64 .pub", "ssh-ed25519"),
        ("rfc4716", "ssh-ed25519"),
        ("rfc4716 flattened", "ssh-ed25519"),
        ("rfc4716 five dashes", "ssh-ed25519"),
        ("pkcs8 rsa", "ssh-rsa"),
        ("pkcs8 ecdsa base64", "ecdsa-sha2-nistp384"),
        ("pkcs1 rsa", "ssh-rsa"),
        ("certificate", "ssh-ed25519-cert-v01@openssh.com"),
    ],
)
def test_public_key_pasted(public_keys: dict[str, str], name: str, kind: str) -> None:
    assert str(load_error(public_keys[name])) == public_message(kind)


# --------------------------------------------------------------------------- other wrong values


@pytest.mark.parametrize("value", ["", "   \n\t", "\r\n", '""', "''", "\\n"])
def test_empty_value(value: str) -> None:
    error = load_error(value)
    assert str(error).startswith("SSH_PRIVATE_KEY is empty — ")
    assert_clean_error(error)


PPK = """PuTTY-User-Key-File-3: ssh-ed25519
Encryption: none
Comment: eddsa-key-20240101
Public-Lines: 2
AAAAC3NzaC1lZDI1NTE5AAAAIK1zRl0RVOcBkiyoDBAHMIVUr3rqHkSeN6HkSTvk
Yk2T
Private-Lines: 1
AAAAIIBN0Wx1GU6LExXaEYcWU9UAMcHm4ytHdxPQcUIOHvmf
Private-MAC: 6b3f53f6d40f1c9a1f7bd4c7d8d9a3b1e0f8c2d4a6b8c0e2f4a6b8c0d2e4f6a8
"""


@pytest.mark.parametrize("mangle", ["as-is", "crlf", "spaces", "base64"])
def test_putty_key_says_how_to_convert(mangle: str) -> None:
    error = load_error(MANGLES[mangle](PPK))
    assert str(error) == (
        "SSH_PRIVATE_KEY is a PuTTY .ppk key — convert it with"
        " `puttygen key.ppk -O private-openssh -o key`"
    )
    assert_clean_error(error, PPK)


def test_ssh_com_key_says_how_to_convert() -> None:
    value = (
        '---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----\nComment: "rsa-key"\n'
        "P2/56wAAAi4AAAA3aWYtbW9kbntzaWdue3JzYS1wa2NzMS1zaGExfSxlbmNyeXB0e3JzYS1wa2NzMXYy\n"
        "---- END SSH2 ENCRYPTED PRIVATE KEY ----\n"
    )
    assert str(load_error(value)) == (
        "SSH_PRIVATE_KEY is an ssh.com (SSH2) private key — convert it with"
        " `ssh-keygen -i -f key > key.openssh`"
    )


@pytest.mark.parametrize(
    ("form", "encrypted"),
    [
        (Form("dsa", None, "openssh"), False),
        (Form("dsa", None, "openssh"), True),  # the type is read from the clear header
        (Form("dsa", None, "PEM"), False),
        (Form("dsa", None, "PEM"), True),
        (Form("dsa", None, "PKCS8"), False),
    ],
    ids=["openssh", "openssh-encrypted", "pem", "pem-encrypted", "pkcs8"],
)
def test_dsa_keys_are_named_and_refused(keygen: KeyMaker, form: Form, encrypted: bool) -> None:
    key = keygen(form, encrypted)
    for value in (key.text, MANGLES["base64"](key.text)):
        error = load_error(value)
        assert str(error) == DSA
        assert_clean_error(error, key.text)


def test_encrypted_pkcs8_dsa_key_is_named_once_decrypted(keygen: KeyMaker) -> None:
    key = keygen(Form("dsa", None, "PKCS8"), encrypted=True)
    assert str(load_error(key.text)) == ENCRYPTED  # nothing tells the type before decrypting
    assert str(load_error(key.text, passphrase=PASSPHRASE)) == DSA


def openssh_block(key_type: str) -> str:
    """A well-formed openssh-key-v1 container for a key type ssh-keygen cannot make here."""

    def string(data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + data

    public = string(key_type.encode()) + string(b"\x01" * 32) + string(b"ssh:")
    private = struct.pack(">II", 7, 7) + public + string(b"\x02" * 64) + string(b"")
    blob = (
        b"openssh-key-v1\x00" + string(b"none") + string(b"none") + string(b"")
        + struct.pack(">I", 1) + string(public) + string(private)
    )  # fmt: skip
    body = base64.b64encode(blob).decode()
    lines = [body[i : i + 70] for i in range(0, len(body), 70)]
    return "\n".join(
        ["-----BEGIN OPENSSH PRIVATE KEY-----", *lines, "-----END OPENSSH PRIVATE KEY-----"]
    )


def test_security_key_is_named_and_refused() -> None:
    assert str(load_error(openssh_block("sk-ssh-ed25519@openssh.com"))) == (
        "SSH_PRIVATE_KEY is a FIDO security-key (sk-ssh-ed25519@openssh.com) key, which needs its"
        " hardware token — use a plain ed25519 deploy key (ssh-keygen -t ed25519)"
    )


def test_unknown_openssh_key_type_is_named() -> None:
    assert str(load_error(openssh_block("ssh-ed448"))) == (
        f"SSH_PRIVATE_KEY holds a key of type ssh-ed448, which deployer cannot use — {USE_ED25519}"
    )


def openssl(*args: str) -> subprocess.CompletedProcess[bytes]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    made = subprocess.run(["openssl", *args], capture_output=True, timeout=60, check=False)
    assert made.returncode == 0, made.stderr
    return made


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_pkcs8_ed25519_from_openssl(tmp_path: Path, encrypted: bool) -> None:
    """ssh-keygen cannot write ed25519 as PKCS#8, OpenSSL can."""
    path = tmp_path / "ed.pem"
    cipher = ["-aes256", "-pass", f"pass:{PASSPHRASE}"] if encrypted else []
    openssl("genpkey", "-algorithm", "ed25519", *cipher, "-out", str(path))
    label = "ENCRYPTED PRIVATE KEY" if encrypted else "PRIVATE KEY"
    assert path.read_text().startswith(f"-----BEGIN {label}-----")
    password = ["-passin", f"pass:{PASSPHRASE}"] if encrypted else []
    der = openssl("pkey", "-in", str(path), *password, "-pubout", "-outform", "DER").stdout
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + der[-32:]
    expected = f"ssh-ed25519 {base64.b64encode(blob).decode()}"
    value = MANGLES["spaces"](path.read_text())
    loaded = load_private_key(value, passphrase=PASSPHRASE if encrypted else None)
    assert public_key_line(loaded) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["genpkey", "-algorithm", "ed448"],
            f"SSH_PRIVATE_KEY holds a key of type Ed448, which deployer cannot use — {USE_ED25519}",
        ),
        (
            ["genpkey", "-algorithm", "x25519"],
            f"SSH_PRIVATE_KEY holds a key of type X25519, which deployer cannot use — {USE_ED25519}",
        ),
        (
            ["ecparam", "-name", "secp256k1", "-genkey", "-noout"],
            f"SSH_PRIVATE_KEY is an ECDSA key on curve secp256k1, which SSH does not use — {USE_ED25519}",
        ),
    ],
    ids=["ed448", "x25519", "secp256k1"],
)
def test_key_types_ssh_cannot_use_are_named(tmp_path: Path, args: list[str], message: str) -> None:
    path = tmp_path / "key.pem"
    openssl(*args, "-out", str(path))
    error = load_error(path.read_text())
    assert str(error) == message
    assert_clean_error(error, path.read_text())


@pytest.mark.parametrize(
    "value",
    [
        "hello world",
        "not a key\nat all\n",
        '{"key": "value"}',
        base64.b64encode(os.urandom(300)).decode(),
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n",
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF\n-----END PGP PRIVATE KEY BLOCK-----\n",
    ],
)
def test_anything_else_is_not_a_private_key(value: str) -> None:
    error = load_error(value)
    assert str(error).startswith(UNREADABLE)
    assert str(error).endswith("paste the whole private key file, from -----BEGIN to -----END")
    assert_clean_error(error)


def test_an_unknown_private_key_block_is_named() -> None:
    value = "-----BEGIN FANCY PRIVATE KEY-----\nAAAA\n-----END FANCY PRIVATE KEY-----\n"
    assert str(load_error(value)).startswith(UNREADABLE + "it holds a FANCY PRIVATE KEY block")


@pytest.mark.parametrize(
    "form",
    [Form("ed25519", None, "openssh"), Form("ecdsa", 256, "PEM"), Form("rsa", 3072, "PKCS8")],
    ids=lambda f: f.id,
)
def test_cut_short_and_damaged_keys(keygen: KeyMaker, form: Form) -> None:
    key = keygen(form)
    lines = key.text.splitlines()
    cut_short = "\n".join(lines[:4])
    error = load_error(cut_short)
    assert str(error).startswith(UNREADABLE + "the -----END line is missing")
    assert_clean_error(error, cut_short)

    missing_middle = "\n".join([*lines[:2], *lines[3:]])
    flipped = ("A" if lines[1][0] != "A" else "B") + lines[1][1:]  # the magic / DER header
    edited = "\n".join([lines[0], flipped, *lines[2:]])
    label = form.label(False)
    for value in (missing_middle, edited, f"-----BEGIN {label}-----\nAAAA\n-----END {label}-----"):
        error = load_error(value)
        assert str(error) == (
            UNREADABLE
            + f"its {label} block is damaged (truncated or edited?); paste the whole key file again"
        ), value
        assert_clean_error(error, key.text)


def test_source_names_the_variable_or_file(keygen: KeyMaker) -> None:
    key = keygen(Form("ed25519", None, "openssh"), encrypted=True)
    error = load_error(key.text, source="DEPLOY_KEY")
    assert str(error) == ENCRYPTED.replace("SSH_PRIVATE_KEY is", "DEPLOY_KEY is")
    with pytest.raises(PrivateKeyError) as caught:
        read_private_key_file(key.path)
    assert str(caught.value) == ENCRYPTED.replace("SSH_PRIVATE_KEY is", f"{key.path} is")
    assert_clean_error(caught.value, key.text)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_no_error_carries_key_material(keygen: KeyMaker, encrypted: bool) -> None:
    """Every failure on a real key: our message only, no chained library exception."""
    for form in ENCRYPTED_FORMS:
        key = keygen(form, encrypted)
        lines = key.text.splitlines()
        wrong_values = [
            ("\n".join(lines[:-1]), None),
            ("\n".join([*lines[:3], *lines[6:]]), PASSPHRASE),
            (
                key.text.replace("-----BEGIN", "-----BEGIN X").replace("-----END", "-----END X"),
                None,
            ),
            (key.text.replace("PRIVATE", "PUBLIC"), None),
        ]
        if encrypted:
            wrong_values += [(key.text, None), (key.text, "wrong passphrase")]
        for value, passphrase in wrong_values:
            error = load_error(value, passphrase=passphrase)
            assert_clean_error(error, key.text)


def test_assert_clean_error_can_fail(keygen: KeyMaker) -> None:
    """The leak check above finds a body line, a rewrapped chunk and a chained exception."""
    key = keygen(Form("ed25519", None, "openssh"))
    secret = body_lines(key.text)[1]
    with pytest.raises(AssertionError):
        assert_clean_error(PrivateKeyError(f"bad key {secret}"), key.text)
    with pytest.raises(AssertionError):
        assert_clean_error(PrivateKeyError(f"bad key {secret[5:30]}"), key.text)
    try:
        try:
            raise ValueError("library text")
        except ValueError as exc:
            raise PrivateKeyError("chained") from exc
    except PrivateKeyError as chained:
        with pytest.raises(AssertionError):
            assert_clean_error(chained, key.text)


# --------------------------------------------------------------------------- files and the disk


def test_read_private_key_file(keygen: KeyMaker, tmp_path: Path) -> None:
    key = keygen(Form("ecdsa", 521, "openssh"), encrypted=True)
    assert public_key_line(read_private_key_file(key.path, passphrase=PASSPHRASE)) == key.public
    crlf = tmp_path / "crlf-key"
    crlf.write_bytes(key.text.replace("\n", "\r\n").encode())
    assert public_key_line(read_private_key_file(crlf, passphrase=PASSPHRASE)) == key.public
    public = Path(f"{key.path}.pub")
    with pytest.raises(PrivateKeyError) as caught:
        read_private_key_file(public)
    assert str(caught.value) == public_message("ecdsa-sha2-nistp521").replace(
        "SSH_PRIVATE_KEY", str(public)
    )


@pytest.mark.parametrize("problem", ["missing", "directory", "huge", "empty"])
def test_unreadable_key_files(tmp_path: Path, problem: str) -> None:
    path = tmp_path / "key"
    if problem == "directory":
        path.mkdir()
    elif problem == "huge":
        path.write_bytes(b"A" * (2 << 20))
    elif problem == "empty":
        path.write_bytes(b"")
    with pytest.raises(PrivateKeyError) as caught:
        read_private_key_file(path)
    expected = {
        "missing": f"{path} cannot be read (No such file or directory) — check --key-file",
        "directory": f"{path} cannot be read (Is a directory) — check --key-file",
        "huge": f"{path} is larger than 1024 KiB, too large to be a private key — check --key-file",
        "empty": f"{path} is empty — it must hold the whole private key file, from -----BEGIN to -----END",
    }
    assert str(caught.value) == expected[problem]


@pytest.fixture
def no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Run in an empty cwd and TMPDIR, with every way of opening or making a file recorded."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("TMPDIR", str(work))
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    calls: list[str] = []

    def recorder(name: str, real: Callable[..., object]) -> Callable[..., object]:
        def record(*args: object, **kwargs: object) -> object:
            calls.append(f"{name}{args!r}")
            return real(*args, **kwargs)

        return record

    monkeypatch.setattr(builtins, "open", recorder("open", builtins.open))
    monkeypatch.setattr(io, "open", recorder("io.open", io.open))
    monkeypatch.setattr(os, "open", recorder("os.open", os.open))
    for name in (
        "mkstemp",
        "mkdtemp",
        "NamedTemporaryFile",
        "TemporaryFile",
        "SpooledTemporaryFile",
    ):
        monkeypatch.setattr(tempfile, name, recorder(f"tempfile.{name}", getattr(tempfile, name)))
    yield calls
    assert os.listdir(work) == []


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_loading_never_touches_the_disk(
    keygen: KeyMaker, no_files: list[str], encrypted: bool
) -> None:
    keys = [keygen(form, encrypted) for form in ENCRYPTED_FORMS]
    for key in keys:
        for mangle in ("as-is", "spaces", "base64"):
            loaded = load_private_key(MANGLES[mangle](key.text), passphrase=key.passphrase)
            assert public_key_line(loaded) == key.public
    with pytest.raises(PrivateKeyError):
        load_private_key("\n".join(keys[0].text.splitlines()[:-1]), passphrase=keys[0].passphrase)
    assert no_files == []


def test_no_files_fixture_notices_a_write(no_files: list[str]) -> None:
    with tempfile.NamedTemporaryFile() as handle:
        handle.write(b"x")
    assert no_files and no_files[0].startswith("tempfile.NamedTemporaryFile")
    no_files.clear()


def test_module_has_no_way_to_write_a_file() -> None:
    source = Path(deployer.ssh.keys.__file__).read_text()
    for forbidden in ("tempfile", "write_", ".write(", "mkstemp", "os.open", "print("):
        assert forbidden not in source
    assert re.findall(r"\bopen\([^)]*\)", source) == ['open("rb")']
