"""Interop with an independent XMLDSig implementation: the Debian ``xmlsec1`` tool (C, libxmlsec1).

``tests/run`` installs it; these tests fail (never skip) when it is missing.

ECDSA: xmlsec1 (like every OpenSSL-based signer) writes ``s`` in either of its two forms at
random, and accepts both; the gateway accepts only the low-S form (docs/signatures.md). The
tests never depend on that coin: they take xmlsec1's signature and derive both forms from it
(``s`` and ``n - s``, each valid), so each run checks both verdicts.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import shutil
import subprocess
from pathlib import Path
from typing import Literal

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from lxml import etree
from support import G22, H41, DevPKI, sample

from gateway.trust.keypolicy import curve_order
from gateway.trust.signing import VIETNAM_TZ, sign_package

XMLSEC1 = shutil.which("xmlsec1")
DS = "http://www.w3.org/2000/09/xmldsig#"

TEMPLATE = """<Signature xmlns="http://www.w3.org/2000/09/xmldsig#">
  <SignedInfo>
    <CanonicalizationMethod Algorithm="{c14n}"/>
    <SignatureMethod Algorithm="{method}"/>
    <Reference URI="">
      <Transforms>
        <Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/>{extra}
      </Transforms>
      <DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/>
      <DigestValue/>
    </Reference>
  </SignedInfo>
  <SignatureValue/>
  <KeyInfo><X509Data><X509Certificate/></X509Data></KeyInfo>
</Signature>"""

RSA = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
ECDSA = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"
EXC = "http://www.w3.org/2001/10/xml-exc-c14n#"
INCL = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"


def _xmlsec1() -> str:
    assert XMLSEC1, "xmlsec1 is not installed: run tests/run (apt-get install xmlsec1)"
    return XMLSEC1


def _template(name: str, method: str, c14n: str, with_c14n_transform: bool) -> bytes:
    """A field sample with its placeholder signature replaced by an xmlsec1 template."""
    root = etree.fromstring(sample(name))
    header = root.find("{*}edXMLEnvelope/{*}edXMLHeader")
    for old in header.findall("{*}Signature"):
        header.remove(old)
    # the signing time (signed content) must fall in the fresh certificate's validity
    now = dt.datetime.now(VIETNAM_TZ).strftime("%Y/%m/%d %H:%M:%S")
    for ts in root.iter("{*}Timestamp"):
        ts.text = now
    extra = f'\n        <Transform Algorithm="{c14n}"/>' if with_c14n_transform else ""
    header.append(etree.fromstring(TEMPLATE.format(c14n=c14n, method=method, extra=extra)))
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _xmlsec_sign(tmp: Path, template: bytes, key: Path, cert: Path) -> bytes:
    tmpl = tmp / "template.edxml"
    out = tmp / "signed-by-xmlsec1.edxml"
    tmpl.write_bytes(template)
    done = subprocess.run(
        [_xmlsec1(), "--sign", "--privkey-pem", f"{key},{cert}", "--output", str(out), str(tmpl)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return out.read_bytes()


_SIGNATURE_VALUE = re.compile(rb"(<(?:\w+:)?SignatureValue[^>]*>)([^<]*)(</)")


def ecdsa_form(
    data: bytes, form: Literal["low", "high"], curve: ec.EllipticCurve | None = None
) -> bytes:
    """``data`` with its ECDSA SignatureValue's ``s`` in the given form (``s`` or ``n - s``).

    Both forms verify under the same key (SignatureValue is not in SignedInfo); only the
    bytes of SignatureValue change, everything else stays as the signer wrote it.
    """
    order = curve_order(curve or ec.SECP256R1())
    match = _SIGNATURE_VALUE.search(data)
    assert match is not None, "no SignatureValue"
    raw = base64.b64decode(b"".join(match.group(2).split()))
    size = len(raw) // 2
    s = int.from_bytes(raw[size:], "big")
    wanted = min(s, order - s) if form == "low" else max(s, order - s)
    value = base64.b64encode(raw[:size] + wanted.to_bytes(size, "big"))
    return data[: match.start(2)] + value + data[match.end(2) :]


def _xmlsec_verify(tmp: Path, data: bytes, pki: DevPKI) -> subprocess.CompletedProcess[str]:
    path = tmp / "to-verify.edxml"
    path.write_bytes(data)
    return subprocess.run(
        [
            _xmlsec1(),
            "--verify",
            "--trusted-pem",
            str(pki.ca.root_cert),
            "--untrusted-pem",
            str(pki.ca.intermediate_cert),
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    ("agency", "key_type", "method", "c14n", "transform", "name"),
    [
        (G22, "rsa2048", RSA, EXC, True, "edoc_update.edxml"),
        (G22, "rsa3072", RSA, INCL, False, "edoc_revocation.edxml"),
        (H41, "ec-p256", ECDSA, EXC, True, "status_finish_06.edxml"),
    ],
)
def test_signed_by_xmlsec1_verifies_with_gateway(
    tmp_path: Path,
    fresh_pki: DevPKI,
    agency: str,
    key_type: str,
    method: str,
    c14n: str,
    transform: bool,
    name: str,
) -> None:
    issued = fresh_pki.issue(agency, key_type=key_type)
    signed = _xmlsec_sign(
        tmp_path, _template(name, method, c14n, transform), issued.key, issued.cert
    )
    if method == ECDSA:
        # Both forms of xmlsec1's signature: xmlsec1 accepts both, the gateway the low one.
        high = ecdsa_form(signed, "high")
        assert _xmlsec_verify(tmp_path, high, fresh_pki).returncode == 0
        refused = fresh_pki.verifier(with_intermediate=True).verify(high)
        assert [e.code for e in refused.errors] == ["SIGNATURE_NON_CANONICAL"]
        signed = ecdsa_form(signed, "low")
        assert _xmlsec_verify(tmp_path, signed, fresh_pki).returncode == 0
    # xmlsec1 embeds the leaf only: the verifier is configured with the intermediate
    report = fresh_pki.verifier(with_intermediate=True).verify(signed)
    assert report.valid, report.render_text()
    assert report.package is not None and report.package.from_.organ_id == agency

    tampered = signed.replace(b"<edXML:OrganName>", b"<edXML:OrganName>X", 1)
    bad = fresh_pki.verifier(with_intermediate=True).verify(tampered)
    assert [e.code for e in bad.errors] == ["SIGNATURE_DIGEST_MISMATCH"]
    assert _xmlsec_verify(tmp_path, tampered, fresh_pki).returncode != 0


@pytest.mark.parametrize(
    ("agency", "key_type", "name"),
    [(G22, "rsa2048", "edoc_update.edxml"), (H41, "ec-p256", "status_acceptance_03.edxml")],
)
def test_signed_by_gateway_verifies_with_xmlsec1(
    tmp_path: Path, fresh_pki: DevPKI, agency: str, key_type: str, name: str
) -> None:
    signed = sign_package(sample(name), fresh_pki.key(agency, key_type=key_type))
    ok = _xmlsec_verify(tmp_path, signed, fresh_pki)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout + ok.stderr

    tampered = signed.replace(b"<edXML:OrganName>", b"<edXML:OrganName>X", 1)
    failed = _xmlsec_verify(tmp_path, tampered, fresh_pki)
    assert failed.returncode != 0
    assert [e.code for e in fresh_pki.verifier().verify(tampered).errors] == [
        "SIGNATURE_DIGEST_MISMATCH"
    ]


def test_xmlsec1_rejects_a_gateway_signature_from_an_untrusted_ca(
    tmp_path: Path, fresh_pki: DevPKI, other_pki: DevPKI
) -> None:
    """Control: xmlsec1 really checks the chain, so its 'OK' above means something."""
    signed = sign_package(sample("edoc_update.edxml"), other_pki.key(G22))
    assert _xmlsec_verify(tmp_path, signed, fresh_pki).returncode != 0


def test_rsa_sha1_from_xmlsec1_is_weak_but_admissible_for_archives(
    tmp_path: Path, fresh_pki: DevPKI
) -> None:
    issued = fresh_pki.issue(G22)
    template = _template(
        "edoc_update.edxml", "http://www.w3.org/2000/09/xmldsig#rsa-sha1", EXC, True
    ).replace(b"http://www.w3.org/2001/04/xmlenc#sha256", b"http://www.w3.org/2000/09/xmldsig#sha1")
    signed = _xmlsec_sign(tmp_path, template, issued.key, issued.cert)
    strict = fresh_pki.verifier(with_intermediate=True).verify(signed)
    assert [e.code for e in strict.errors] == ["SIGNATURE_WEAK_ALGORITHM"]
    legacy = fresh_pki.verifier(with_intermediate=True, allow_weak_algorithms=True).verify(signed)
    assert legacy.valid, legacy.render_text()
    assert legacy.weak_algorithm_admitted
    assert "weak algorithm admitted" in legacy.render_text()
