"""Fetch the CA certificates Postgres is verified against, each only if its SHA-256 matches
its pin, into the layer (``layers/deps/rds-ca/global-bundle.pem``, at
``/opt/python/rds-ca/global-bundle.pem`` in Lambda).

``python scripts/fetch_rds_ca.py [--pin]``: ``--pin`` records the hashes of what it fetched in
``layers/deps/rds-ca/PIN`` instead of checking them. Standard library only.
"""

from __future__ import annotations

import hashlib
import sys
import urllib.error
import urllib.request
from pathlib import Path

DIR = Path(__file__).resolve().parents[1] / "layers" / "deps" / "rds-ca"
PIN = DIR / "PIN"
BUNDLE = DIR / "global-bundle.pem"
UNPINNED = "unpinned"


def read_pins(text: str) -> list[tuple[str, str]]:
    """(sha256, url) per non-comment line."""
    pins = []
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            digest, url = line.split()
            pins.append((digest, url))
    return pins


def refusal(data: bytes, pinned: str, url: str) -> str | None:
    """Why ``data`` fetched from ``url`` is refused, or None."""
    if pinned == UNPINNED:
        return f"{url} has no recorded sha256: run `make rds-ca PIN=1`, review layers/deps/rds-ca/PIN, commit"
    digest = hashlib.sha256(data).hexdigest()
    if digest != pinned:
        return f"{url}: sha256 {digest} is not the pinned {pinned} (a rotated CA? review and re-pin)"
    if b"-----BEGIN CERTIFICATE-----" not in data:
        return f"{url}: not a PEM certificate"
    return None


def main(argv: list[str]) -> int:
    pin = "--pin" in argv
    pins = read_pins(PIN.read_text())
    unpinned = [url for digest, url in pins if digest == UNPINNED]
    if unpinned and not pin:
        print(f"CA bundle refused: {refusal(b'', UNPINNED, unpinned[0])}", file=sys.stderr)
        return 1
    parts: list[bytes] = []
    recorded: list[tuple[str, str]] = []
    for pinned, url in pins:
        try:
            with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - pinned https URLs
                data: bytes = response.read()
        except (urllib.error.URLError, TimeoutError) as exc:
            print(f"CA bundle not fetched from {url}: {exc}", file=sys.stderr)
            return 1
        if pin:
            pinned = hashlib.sha256(data).hexdigest()
            print(f"pinned {url} at sha256 {pinned}")
        problem = refusal(data, pinned, url)
        if problem:
            print(f"CA bundle refused: {problem}", file=sys.stderr)
            return 1
        parts.append(data.rstrip(b"\n") + b"\n")
        recorded.append((pinned, url))
    if pin:
        comments = [line for line in PIN.read_text().splitlines() if line.startswith("#")]
        PIN.write_text("\n".join([*comments, *(f"{d} {u}" for d, u in recorded)]) + "\n")
    BUNDLE.write_bytes(b"".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
