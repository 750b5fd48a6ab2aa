"""What a credential looks like, for the two places that must never hold one: fallback configs and bundles.

Patterns match bytes so a bundle's binary weights are scanned with the same rules as its JSON. A finding
shows the kind and a redacted excerpt, never the whole secret.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# kind -> pattern. Lengths follow the issuers' formats; random weight bytes hit these about never.
PATTERNS: dict[str, re.Pattern[bytes]] = {
    "Hugging Face token": re.compile(rb"\b(?:hf|api_org)_[A-Za-z0-9]{30,}"),
    "Authorization header": re.compile(
        rb"(?i)authorization[\"']?\s*[:=]\s*[\"']?(?:bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{8,}"
    ),
    "bearer token": re.compile(rb"(?i)\bbearer\s+(?:hf_|sk-|gh[pousr]_|ey)[A-Za-z0-9._-]{16,}"),
    "private key": re.compile(rb"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY(?: BLOCK)?-----"),
    "OpenAI key": re.compile(rb"\bsk-(?:proj-)?[A-Za-z0-9_-]{32,}"),
    "GitHub token": re.compile(rb"\bgh[pousr]_[A-Za-z0-9]{36,}"),
    "AWS access key": re.compile(rb"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
}
# Config keys that can only mean a credential was pasted in.
CREDENTIAL_KEYS = {
    "token",
    "hf_token",
    "api_key",
    "apikey",
    "authorization",
    "password",
    "secret",
    "access_token",
}

_CHUNK = 1 << 22
_OVERLAP = 4096  # longer than any match, so a secret split across two reads is still seen


@dataclass(frozen=True)
class Finding:
    where: str  # file (relative) or config key path
    offset: int
    kind: str
    excerpt: str  # redacted

    def __str__(self) -> str:
        return f"{self.where} (byte {self.offset}): {self.kind} {self.excerpt}"


def redact(secret: bytes) -> str:
    text = secret.decode("ascii", "replace")
    return f"'{text[:6]}...' ({len(text)} chars)"


def scan_bytes(data: bytes, where: str, base: int = 0) -> list[Finding]:
    found = []
    for kind, pattern in PATTERNS.items():
        for m in pattern.finditer(data):
            found.append(Finding(where, base + m.start(), kind, redact(m.group(0))))
    return found


def scan_text(text: str, where: str) -> list[Finding]:
    return scan_bytes(text.encode("utf-8", "replace"), where)


def scan_file(path: Path, where: str) -> list[Finding]:
    """Scan a file of any size in overlapping chunks; each secret is reported once."""
    found: dict[tuple[int, str], Finding] = {}
    with path.open("rb") as fh:
        offset, tail = 0, b""
        while chunk := fh.read(_CHUNK):
            window = tail + chunk
            for f in scan_bytes(window, where, offset - len(tail)):
                found.setdefault((f.offset, f.kind), f)
            tail = window[-_OVERLAP:]
            offset += len(chunk)
    return sorted(found.values(), key=lambda f: (f.offset, f.kind))


def scan_data(data, where: str = "") -> list[Finding]:
    """Scan parsed YAML/JSON: credential-named keys and token-like string values anywhere in it."""
    found = []
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{where}.{key}" if where else str(key)
            if str(key).lower() in CREDENTIAL_KEYS and value:
                found.append(Finding(path, 0, "credential key", "(value not shown)"))
            found += scan_data(value, path)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found += scan_data(value, f"{where}.{i}")
    elif isinstance(data, str):
        found += [Finding(where or "<value>", 0, f.kind, f.excerpt) for f in scan_text(data, where)]
    return found
