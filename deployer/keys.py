"""Private keys from CI variables and files, held in memory only.

CI variables mangle keys (CRLF, lost newlines, spaces for newlines, base64 for masking); this
module undoes that, parses every OpenSSH/PEM/PKCS#8 form with ``cryptography`` and hands paramiko
an in-memory copy. Nothing is written to disk, and no message ever contains key material.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

from deployer.errors import PrivateKeyError

_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
_PUBLIC_PREFIXES = (
    "ssh-ed25519 ",
    "ssh-rsa ",
    "ecdsa-sha2-",
    "sk-ssh-ed25519",
    "sk-ecdsa-",
    "ssh-dss ",
)


def normalize_key_text(raw: str) -> str:
    """Undo what CI variables do to a private key: CRLF, quotes, lost or flattened newlines, base64."""
    text = raw.strip().strip("'\"").strip()
    text = text.replace("\\n", "\n").replace("\r\n", "\n").replace("\r", "\n")
    if "-----BEGIN" not in text:
        decoded = _maybe_base64(text)
        if decoded is not None:
            text = decoded.replace("\r\n", "\n").strip()
    match = _BLOCK.search(text)
    if not match:
        return text + "\n"
    label, body = match.group(1), match.group(2)
    tokens = body.split()  # works whether newlines survived or were flattened into spaces
    headers: list[str] = []
    if tokens[:1] == ["Proc-Type:"] and len(tokens) >= 4 and tokens[2] == "DEK-Info:":
        headers = [f"Proc-Type: {tokens[1]}", f"DEK-Info: {tokens[3]}"]  # legacy encrypted PEM
        tokens = tokens[4:]
    data = "".join(tokens)
    lines = [data[i : i + 64] for i in range(0, len(data), 64)]
    parts = [
        f"-----BEGIN {label}-----",
        *headers,
        *([""] if headers else []),
        *lines,
        f"-----END {label}-----",
    ]
    return "\n".join(parts) + "\n"


def _maybe_base64(text: str) -> str | None:
    compact = "".join(text.split())
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            data = decode(compact + "=" * (-len(compact) % 4))
        except (binascii.Error, ValueError):
            continue
        try:
            decoded = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if decoded.lstrip().startswith("-----BEGIN") or decoded.startswith(_PUBLIC_PREFIXES):
            return decoded
    return None


def load_private_key(
    raw: str, *, passphrase: str | None = None, source: str = "SSH_PRIVATE_KEY"
) -> paramiko.PKey:
    """Parse an OpenSSH- or PEM-format ed25519/ecdsa/rsa private key held in memory."""
    if not raw.strip():
        raise PrivateKeyError(f"{source} is empty — set it to the deploy key's private key")
    text = normalize_key_text(raw)
    stripped = text.strip()
    if stripped.startswith(_PUBLIC_PREFIXES) or "PUBLIC KEY-----" in stripped:
        kind = (
            stripped.split()[0] if stripped.startswith(_PUBLIC_PREFIXES) else "a public key block"
        )
        raise PrivateKeyError(
            f"{source} holds a public key ({kind} …) — paste the private key (the file without .pub)"
        )
    if stripped.startswith("PuTTY-User-Key-File"):
        raise PrivateKeyError(
            f"{source} is a PuTTY .ppk key — convert it with `puttygen key.ppk -O private-openssh -o key`"
        )
    match = _BLOCK.search(text)
    if not match and "PRIVATE KEY-----" in text:
        raise PrivateKeyError(
            f"{source} is cut short: it has a -----BEGIN line but no matching -----END line"
            " — paste the whole private key file"
        )
    if not match or "PRIVATE KEY" not in match.group(1):
        raise PrivateKeyError(
            f"{source} is not a private key deployer can read (expected an OpenSSH or PEM block"
            " starting with -----BEGIN) — paste the whole private key file"
        )
    secret = passphrase.encode() if passphrase else None
    loaded = _load(match.group(0).encode(), secret, source)
    return _to_paramiko(loaded, source)


_Loaded = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _load(data: bytes, secret: bytes | None, source: str) -> _Loaded:
    openssh = data.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    key: object
    try:
        if openssh:
            key = serialization.load_ssh_private_key(data, password=secret)
        else:
            key = serialization.load_pem_private_key(data, password=secret)
    except TypeError:
        # cryptography raises TypeError for "encrypted but no password" and the reverse
        if secret is None:
            raise PrivateKeyError(
                f"{source} is encrypted — set SSH_PRIVATE_KEY_PASSPHRASE (or use an unencrypted deploy key)"
            ) from None
        return _load(data, None, source)  # not encrypted: the passphrase was not needed
    except ValueError:
        if secret is not None and _is_encrypted(data):
            raise PrivateKeyError(
                f"the passphrase for {source} is wrong — check SSH_PRIVATE_KEY_PASSPHRASE"
            ) from None
        raise PrivateKeyError(
            f"{source} looks like a private key but cannot be parsed (truncated or corrupted?)"
            " — paste the whole key file again"
        ) from None
    except Exception:  # unsupported algorithms surface as various cryptography errors
        raise PrivateKeyError(
            f"{source} uses a key type deployer cannot use — generate an ed25519 key (ssh-keygen -t ed25519)"
        ) from None
    if isinstance(key, dsa.DSAPrivateKey):
        raise PrivateKeyError(
            f"{source} is a DSA key, which OpenSSH no longer accepts — use ed25519"
        )
    if not isinstance(
        key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)
    ):
        raise PrivateKeyError(f"{source} is a {type(key).__name__} key — use ed25519, ecdsa or rsa")
    return key


def _is_encrypted(data: bytes) -> bool:
    if b"ENCRYPTED" in data:
        return True
    if data.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
        body = b"".join(data.split(b"\n")[1:-2])
        try:
            blob = base64.b64decode(body)
        except (binascii.Error, ValueError):
            return False
        return b"none" not in blob[15:40]  # the cipher name follows the "openssh-key-v1\0" magic
    return False


def _to_paramiko(key: _Loaded, source: str) -> paramiko.PKey:
    """Re-serialize in memory as an unencrypted OpenSSH block and let paramiko parse that."""
    text = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    cls: type[paramiko.PKey]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        cls = paramiko.Ed25519Key
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        cls = paramiko.ECDSAKey
    else:
        cls = paramiko.RSAKey
    try:
        return cls.from_private_key(io.StringIO(text))
    except paramiko.SSHException:
        raise PrivateKeyError(
            f"{source}: paramiko cannot use this key — generate an ed25519 key"
        ) from None


def read_private_key_file(path: Path, *, passphrase: str | None = None) -> paramiko.PKey:
    """Load a key file given with --key-file (messages name the path)."""
    try:
        raw = path.read_text(errors="replace")
    except OSError as exc:
        raise PrivateKeyError(f"cannot read key file {path}: {exc.strerror}") from None
    return load_private_key(raw, passphrase=passphrase, source=str(path))


def public_key_line(key: paramiko.PKey, comment: str = "") -> str:
    """'ssh-ed25519 AAAA… comment' for authorized_keys."""
    blob_type = "ssh-rsa" if key.get_name().startswith("rsa-sha2") else key.get_name()
    return f"{blob_type} {key.get_base64()} {comment}".strip()
