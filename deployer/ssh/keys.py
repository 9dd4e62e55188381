"""Private keys from CI variables and files, held in memory only.

CI variables mangle keys (CRLF, lost newlines, spaces for newlines, quotes, base64 for masking);
this module undoes that, finds out what kind of key it holds from the block label and the
OpenSSH header, decodes it with ``cryptography`` and hands paramiko the in-memory result.
Nothing is written to disk, and no message ever contains key material: every error message is
our own text, and library exceptions are dropped before the error is raised.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import paramiko
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519

from deployer.errors import ConfigError, PrivateKeyError

_PASSPHRASE_VARIABLE = "SSH_PRIVATE_KEY_PASSPHRASE"
_MAX_KEY_FILE = 1 << 20  # real keys are a few KiB; refuse to slurp an artifact by mistake
_FIX_UNREADABLE = "is not a private key deployer can read (expected an OpenSSH or PEM block)"
_USE_ED25519 = "generate an ed25519 key (ssh-keygen -t ed25519)"

# RFC 7468 blocks; the label may itself contain spaces ("OPENSSH PRIVATE KEY").
_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9]+(?: [A-Z0-9]+)*)-----(.*?)-----END \1-----", re.DOTALL)
_PRIVATE_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_PEM_HEADER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]*:")
_BASE64_BODY = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_BASE64_VALUE = re.compile(r"[A-Za-z0-9+/_-]+=*")
_PUTTY = re.compile(r"PuTTY-User-Key-File-\d+:")
_SSH_COM_PRIVATE = re.compile(r"-{4,5} ?BEGIN SSH2 ENCRYPTED PRIVATE KEY ?-{4,5}")
_PUBLIC_LINE = re.compile(
    r"(?:^|\s)((?:sk-)?(?:ssh-(?:ed25519|ed448|rsa|dss)|ecdsa-sha2-nistp\d+)"
    r"(?:-cert-v01)?(?:@openssh\.com)?)\s+AAAA"
)
_PUBLIC_BLOCK = re.compile(r"-{4,5} ?BEGIN ((?:SSH2 |RSA |EC )?PUBLIC KEY) ?-{4,5}")
_SSH_BLOB_TOKEN = re.compile(r"AAAA[A-Za-z0-9+/]{8,}")
_SSH_NAME = re.compile(r"[a-z][a-z0-9.@-]{2,63}")

_OPENSSH_LABEL = "OPENSSH PRIVATE KEY"
_OPENSSH_MAGIC = b"openssh-key-v1\x00"
_SUPPORTED_OPENSSH_TYPES = frozenset(
    {"ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"}
)
_SUPPORTED_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
_PEM_LABELS = frozenset(
    {"RSA PRIVATE KEY", "EC PRIVATE KEY", "DSA PRIVATE KEY", "PRIVATE KEY", "ENCRYPTED PRIVATE KEY"}
)

_Loaded = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class _Block:
    """One PEM-style block: its label, RFC 1421 headers (legacy encrypted PEM) and base64 body."""

    label: str
    headers: tuple[tuple[str, str], ...]
    body: str

    def text(self) -> str:
        width = 70 if self.label == _OPENSSH_LABEL else 64  # what ssh-keygen / OpenSSL write
        lines = [f"-----BEGIN {self.label}-----"]
        if self.headers:
            lines += [f"{name}: {value}" for name, value in self.headers] + [""]
        lines += [self.body[i : i + width] for i in range(0, len(self.body), width)]
        lines.append(f"-----END {self.label}-----")
        return "\n".join(lines) + "\n"

    def data(self) -> bytes | None:
        if not _BASE64_BODY.fullmatch(self.body) or len(self.body) % 4:
            return None
        try:
            return base64.b64decode(self.body, validate=True)
        except (binascii.Error, ValueError):
            return None


@dataclass(frozen=True)
class _OpenSSHHeader:
    """The cleartext part of an openssh-key-v1 blob: enough to know the type before decrypting."""

    cipher: str
    kdf: str
    key_type: str


def normalize_key_text(raw: str) -> str:
    """Undo CI mangling of a key: CRLF, quotes, whitespace, literal \\n, spaces for newlines, base64."""
    text = _tidy(raw)
    if "-----" not in text:
        decoded = _decode_base64_key(text)
        if decoded is not None:
            text = _tidy(decoded)
    blocks = _blocks(text)
    if not blocks:
        return text + "\n" if text else ""
    return "".join(block.text() for block in blocks)


def _tidy(raw: str) -> str:
    text = raw.replace("\ufeff", "").strip().strip("'\"").strip()
    # a value written with escapes ("...KEY-----\nb3Bl...") rather than real newlines
    text = text.replace("\\r", "").replace("\\n", "\n")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _decode_base64_key(text: str) -> str | None:
    """The key text if ``text`` is a whole key base64-encoded (standard or urlsafe, any padding)."""
    compact = "".join(text.split()).rstrip("=")
    if not compact or not _BASE64_VALUE.fullmatch(compact) or len(compact) % 4 == 1:
        return None
    standard = compact.replace("-", "+").replace("_", "/")
    try:
        decoded = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
        candidate = _tidy(decoded.decode("utf-8"))
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    looks_like_key = (
        candidate.startswith(("-----BEGIN", "---- BEGIN"))
        or _PUTTY.match(candidate) is not None
        or _PUBLIC_LINE.match(candidate) is not None
    )
    return candidate if looks_like_key else None


def _blocks(text: str) -> list[_Block]:
    blocks = []
    for match in _BLOCK.finditer(text):
        # split() copes with newlines kept, turned into spaces, or doubled
        tokens = match.group(2).split()
        headers: list[tuple[str, str]] = []
        while len(tokens) >= 2 and _PEM_HEADER_NAME.fullmatch(tokens[0]):
            headers.append((tokens[0][:-1], tokens[1]))
            tokens = tokens[2:]
        blocks.append(_Block(match.group(1), tuple(headers), "".join(tokens)))
    return blocks


def load_private_key(
    raw: str, *, passphrase: str | None = None, source: str = "SSH_PRIVATE_KEY"
) -> paramiko.PKey:
    """Parse an OpenSSH- or PEM-format ed25519/ecdsa/rsa private key held in memory."""
    text = normalize_key_text(raw)
    if not text.strip():
        raise PrivateKeyError(
            f"{source} is empty — it must hold the whole private key file, from -----BEGIN to -----END"
        )
    block = next((b for b in _blocks(text) if b.label.endswith("PRIVATE KEY")), None)
    if block is None:
        raise PrivateKeyError(_not_a_private_key(text, source)) from None
    key = _decode(block, passphrase or None, source)
    return _to_paramiko(key, source)


def _not_a_private_key(text: str, source: str) -> str:
    """The message for a value without a private key block: say what it holds instead."""
    if _PUTTY.match(text):
        return (
            f"{source} is a PuTTY .ppk key — convert it with"
            " `puttygen key.ppk -O private-openssh -o key`"
        )
    if _SSH_COM_PRIVATE.search(text):
        return f"{source} is an ssh.com (SSH2) private key — convert it with `ssh-keygen -i -f key > key.openssh`"
    public = _public_key_kind(text)
    if public is not None:
        return f"{source} holds a public key ({public} …) — paste the private key (the file without .pub)"
    if _PRIVATE_BEGIN.search(text):
        return (
            f"{source} {_FIX_UNREADABLE} — the -----END line is missing, so the value looks"
            " cut short; paste the whole key file"
        )
    return f"{source} {_FIX_UNREADABLE} — paste the whole private key file, from -----BEGIN to -----END"


def _public_key_kind(text: str) -> str | None:
    """The SSH type name of a public key in ``text`` ("ssh-ed25519"), or None if there is none."""
    line = _PUBLIC_LINE.search(text)
    if line is not None:
        return line.group(1)
    block = _PUBLIC_BLOCK.search(text)
    if block is None:
        return None
    label = block.group(1)
    if label == "SSH2 PUBLIC KEY":
        token = _SSH_BLOB_TOKEN.search(text, block.end())
        if token is not None:
            usable = token.group(0)[: len(token.group(0)) // 4 * 4]
            name = _ssh_string(base64.b64decode(usable), 0)
            if name is not None and _SSH_NAME.fullmatch(name[0]):
                return name[0]
        return f"-----BEGIN {label}-----"
    for candidate in _blocks(text):
        if candidate.label == label:
            try:
                public = serialization.load_pem_public_key(candidate.text().encode())
                line_bytes = public.public_bytes(
                    serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
                )
            except (ValueError, TypeError, UnsupportedAlgorithm):
                break
            return line_bytes.split(b" ", 1)[0].decode()
    return f"-----BEGIN {label}-----"


def _ssh_string(data: bytes, offset: int) -> tuple[str, int] | None:
    """One SSH wire-format string (uint32 length + bytes) as text, and the offset after it."""
    if offset + 4 > len(data):
        return None
    (length,) = struct.unpack_from(">I", data, offset)
    end = offset + 4 + length
    if end > len(data):
        return None
    try:
        return data[offset + 4 : end].decode("ascii"), end
    except UnicodeDecodeError:
        return None


def _openssh_header(data: bytes) -> _OpenSSHHeader | None:
    """Cipher, KDF and key type of an openssh-key-v1 blob (all stored in clear), or None if damaged."""
    if not data.startswith(_OPENSSH_MAGIC):
        return None
    cipher = _ssh_string(data, len(_OPENSSH_MAGIC))
    if cipher is None:
        return None
    kdf = _ssh_string(data, cipher[1])
    if kdf is None:
        return None
    kdf_options_end = _skip_ssh_bytes(data, kdf[1])
    if kdf_options_end is None:
        return None
    public_blob_at = kdf_options_end + 4  # after the uint32 key count
    public_end = _skip_ssh_bytes(data, public_blob_at)
    if public_end is None:
        return None
    key_type = _ssh_string(data[public_blob_at + 4 : public_end], 0)
    if key_type is None:
        return None
    names = (cipher[0], kdf[0], key_type[0])
    if not all(_SSH_NAME.fullmatch(name) for name in names):
        return None  # these names end up in messages: only plain algorithm names qualify
    return _OpenSSHHeader(*names)


def _skip_ssh_bytes(data: bytes, offset: int) -> int | None:
    """The offset after one SSH wire-format string, or None if it runs past the end."""
    if offset + 4 > len(data):
        return None
    (length,) = struct.unpack_from(">I", data, offset)
    end: int = offset + 4 + length
    return end if end <= len(data) else None


def _decode(block: _Block, passphrase: str | None, source: str) -> _Loaded:
    """Find out the key's type and whether it is encrypted, then decrypt and decode it."""
    damaged = (
        f"{source} {_FIX_UNREADABLE} — its {block.label} block is damaged (truncated or edited?);"
        " paste the whole key file again"
    )
    data = block.data()
    if data is None:
        raise PrivateKeyError(damaged) from None
    cipher: str | None = None
    if block.label == _OPENSSH_LABEL:
        header = _openssh_header(data)
        if header is None:
            raise PrivateKeyError(damaged) from None
        _check_openssh_type(header.key_type, source)
        encrypted = header.cipher != "none" or header.kdf != "none"
        cipher = header.cipher
    elif block.label in _PEM_LABELS:
        if block.label == "DSA PRIVATE KEY":
            raise PrivateKeyError(_unsupported_message("DSA (ssh-dss)", source)) from None
        encrypted = block.label == "ENCRYPTED PRIVATE KEY" or any(
            name == "Proc-Type" and "ENCRYPTED" in value for name, value in block.headers
        )
    else:
        raise PrivateKeyError(
            f"{source} {_FIX_UNREADABLE} — it holds a {block.label} block; paste an OpenSSH"
            " (-----BEGIN OPENSSH PRIVATE KEY-----) or PEM private key"
        ) from None
    if encrypted and passphrase is None:
        raise PrivateKeyError(
            f"{source} is encrypted — set {_PASSPHRASE_VARIABLE} (or use an unencrypted deploy key)"
        ) from None

    pem = block.text().encode()
    loaded: object = None
    failure: str | None = None
    # GitLab file variables end with a newline; a passphrase never does, so try without it too
    attempts: list[bytes | None] = [None]
    if encrypted and passphrase is not None:
        attempts = [passphrase.encode()]
        if passphrase.strip("\r\n") not in ("", passphrase):
            attempts.append(passphrase.strip("\r\n").encode())
    for password in attempts:
        try:
            if block.label == _OPENSSH_LABEL:
                loaded = serialization.load_ssh_private_key(pem, password=password)
            else:
                loaded = serialization.load_pem_private_key(pem, password=password)
        except UnsupportedAlgorithm:
            failure = "unsupported"
            break
        except (ValueError, TypeError):  # bad password or structure; their text is never reused
            failure = "invalid"
        else:
            failure = None
            break
    if failure == "unsupported":
        if encrypted:
            fix = "`ssh-keygen -p -Z aes256-ctr -f key`" if cipher else "`ssh-keygen -p -f key`"
            used = f"with {cipher}" if cipher else "with a cipher"
            raise PrivateKeyError(
                f"{source} is encrypted {used}, which deployer cannot decrypt — re-encrypt it with {fix}"
            ) from None
        raise PrivateKeyError(_unsupported_message(None, source)) from None
    if failure == "invalid":
        if encrypted:
            raise PrivateKeyError(
                f"{source} could not be decrypted: the passphrase is wrong — check {_PASSPHRASE_VARIABLE}"
            ) from None
        raise PrivateKeyError(damaged) from None
    return _check_loaded_type(loaded, source)


def _check_openssh_type(key_type: str, source: str) -> None:
    if key_type in _SUPPORTED_OPENSSH_TYPES:
        return
    if key_type.startswith("sk-"):
        raise PrivateKeyError(
            f"{source} is a FIDO security-key ({key_type}) key, which needs its hardware token"
            " — use a plain ed25519 deploy key (ssh-keygen -t ed25519)"
        ) from None
    name = "DSA (ssh-dss)" if key_type == "ssh-dss" else key_type
    raise PrivateKeyError(_unsupported_message(name, source)) from None


def _check_loaded_type(key: object, source: str) -> _Loaded:
    if isinstance(key, (ed25519.Ed25519PrivateKey, rsa.RSAPrivateKey)):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if isinstance(key.curve, _SUPPORTED_CURVES):
            return key
        raise PrivateKeyError(
            f"{source} is an ECDSA key on curve {key.curve.name}, which SSH does not use — {_USE_ED25519}"
        ) from None
    names: list[tuple[type, str]] = [
        (dsa.DSAPrivateKey, "DSA (ssh-dss)"),
        (ed448.Ed448PrivateKey, "Ed448"),
        (x25519.X25519PrivateKey, "X25519"),
        (x448.X448PrivateKey, "X448"),
    ]
    name = next((label for cls, label in names if isinstance(key, cls)), None)
    raise PrivateKeyError(_unsupported_message(name, source)) from None


def _unsupported_message(name: str | None, source: str) -> str:
    if name is None:
        return f"{source} holds a key of a type deployer cannot use — {_USE_ED25519}"
    if name.startswith("DSA"):
        return f"{source} is a {name} key, which OpenSSH no longer accepts — {_USE_ED25519}"
    return f"{source} holds a key of type {name}, which deployer cannot use — {_USE_ED25519}"


def _to_paramiko(key: _Loaded, source: str) -> paramiko.PKey:
    """Wrap the decoded key in its paramiko class without any file in between."""
    try:
        if isinstance(key, rsa.RSAPrivateKey):
            # paramiko signs with rsa-sha2-256/512 by itself when the server offers them
            return paramiko.RSAKey(key=key)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return paramiko.ECDSAKey(vals=(key, key.public_key()))
        # Ed25519Key is only built from the OpenSSH format: re-encode into a string, never a file
        text = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ).decode()
        return paramiko.Ed25519Key.from_private_key(io.StringIO(text))
    except (paramiko.SSHException, ValueError, TypeError):
        pass
    raise PrivateKeyError(f"{source} holds a key paramiko cannot use — {_USE_ED25519}") from None


def read_private_key_file(path: Path, *, passphrase: str | None = None) -> paramiko.PKey:
    """Load a key file given with --key-file (source in messages = the path)."""
    problem: str | None = None
    data = b""
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_KEY_FILE + 1)
    except OSError as exc:
        problem = exc.strerror or type(exc).__name__
    if problem is not None:
        raise PrivateKeyError(f"{path} cannot be read ({problem}) — check --key-file") from None
    if len(data) > _MAX_KEY_FILE:
        raise PrivateKeyError(
            f"{path} is larger than {_MAX_KEY_FILE // 1024} KiB, too large to be a private key"
            " — check --key-file"
        )
    text = data.decode("utf-8", errors="replace")
    return load_private_key(text, passphrase=passphrase, source=str(path))


def public_key_line(key: paramiko.PKey, comment: str = "") -> str:
    """'ssh-ed25519 AAAA… comment' for authorized_keys."""
    key_type = paramiko.Message(key.asbytes()).get_text()  # "ssh-rsa" even when signing with sha2
    return " ".join(part for part in (key_type, key.get_base64(), comment) if part)


def public_key_from(
    value: str | None, env: Mapping[str, str], key_file: Path | None, what: str
) -> str | None:
    """A public key line from a line, a .pub or private key file, or SSH_PRIVATE_KEY/--key-file."""
    if value:
        text = value.strip()
        if text.startswith(("ssh-", "ecdsa-", "sk-")):
            return " ".join(text.split())
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(f"{what} {value!r} is neither a public key line nor a file")
        content = path.read_text(errors="replace")
        if "PRIVATE KEY" in content:
            return public_key_line(
                read_private_key_file(path, passphrase=env.get("SSH_PRIVATE_KEY_PASSPHRASE"))
            )
        for line in content.splitlines():
            if line.strip().startswith(("ssh-", "ecdsa-", "sk-")):
                return " ".join(line.split())
        raise ConfigError(f"{what} {path}: no public key line in the file")
    if key_file is not None:
        return public_key_line(
            read_private_key_file(key_file, passphrase=env.get("SSH_PRIVATE_KEY_PASSPHRASE"))
        )
    if env.get("SSH_PRIVATE_KEY", "").strip():
        key = load_private_key(
            env["SSH_PRIVATE_KEY"], passphrase=env.get("SSH_PRIVATE_KEY_PASSPHRASE") or None
        )
        return public_key_line(key)
    return None
