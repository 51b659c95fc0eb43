"""The signer key policy (gateway.trust.keypolicy): which keys are admitted, and low-S ECDSA."""

from __future__ import annotations

import datetime as dt
import warnings
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, utils, x25519
from cryptography.x509.oid import NameOID

from gateway.errors import CertificateKeyWeak, SignatureNonCanonical
from gateway.trust.keypolicy import (
    ADMITTED_CURVES,
    KeyType,
    check_certificate_key,
    check_chain_keys,
    check_key,
    check_low_s,
    curve_order,
    is_low_s,
    key_facts,
    low_s_der,
    low_s_raw,
)

# One key of each kind for the whole module: RSA generation is the slow part of these tests.
_RSA_1024 = rsa.generate_private_key(65537, 1024)
_RSA_2048 = rsa.generate_private_key(65537, 2048)


@pytest.mark.parametrize(
    ("key", "detail"),
    [
        (_RSA_2048.public_key(), {"key_type": "RSA", "bits": 2048}),
        (
            ec.generate_private_key(ec.SECP256R1()).public_key(),
            {"key_type": "EC", "curve": "secp256r1", "bits": 256},
        ),
        (
            ec.generate_private_key(ec.SECP384R1()).public_key(),
            {"key_type": "EC", "curve": "secp384r1", "bits": 384},
        ),
    ],
)
def test_admitted_keys(key: Any, detail: dict[str, Any]) -> None:
    facts = key_facts(key)
    assert facts.refusal is None
    assert facts.detail() == detail
    check_key(key)  # does not raise


@pytest.mark.parametrize(
    ("key", "detail"),
    [
        (_RSA_1024.public_key(), {"key_type": "RSA", "bits": 1024}),
        (
            ec.generate_private_key(ec.SECP521R1()).public_key(),
            {"key_type": "EC", "curve": "secp521r1", "bits": 521},
        ),
        (
            ec.generate_private_key(ec.SECP256K1()).public_key(),
            {"key_type": "EC", "curve": "secp256k1", "bits": 256},
        ),
        (
            ec.generate_private_key(ec.BrainpoolP256R1()).public_key(),
            {"key_type": "EC", "curve": "brainpoolP256r1", "bits": 256},
        ),
        (ed25519.Ed25519PrivateKey.generate().public_key(), {"key_type": "Ed25519"}),
        (ed448.Ed448PrivateKey.generate().public_key(), {"key_type": "Ed448"}),
        (x25519.X25519PrivateKey.generate().public_key(), {"key_type": "other"}),
    ],
)
def test_refused_keys_name_their_type_and_size(key: Any, detail: dict[str, Any]) -> None:
    with pytest.raises(CertificateKeyWeak) as info:
        check_key(key, role="signer", subject="CN=x")
    assert info.value.code == "CERT_KEY_WEAK"
    got = dict(info.value.detail)
    assert {k: got.pop(k) for k in ("role", "subject", "reason")} == {
        "role": "signer",
        "subject": "CN=x",
        "reason": key_facts(key).refusal,
    }
    assert got == detail


def test_rsa_public_exponent_must_be_odd_and_bounded() -> None:
    n = _RSA_2048.public_key().public_numbers().n
    assert key_facts(rsa.RSAPublicNumbers(3, n).public_key()).refusal is None
    # (cryptography itself refuses an even exponent when loading the key)
    facts = key_facts(rsa.RSAPublicNumbers(2**300 + 1, n).public_key())
    assert facts.refusal is not None and "exponent" in facts.refusal


def _certificate(
    key: Any, issuer_key: Any, *, ca: bool = False, name: str = "x"
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


def test_a_dsa_certificate_is_refused_without_loading_its_key() -> None:
    with warnings.catch_warnings():  # making one: DSA is deprecated in cryptography 51
        warnings.simplefilter("ignore")
        from cryptography.hazmat.primitives.asymmetric import dsa

        cert = _certificate(dsa.generate_private_key(2048), _RSA_2048)
    # loading a DSA key warns, and warnings are errors here: the policy must not load it
    with pytest.raises(CertificateKeyWeak) as info:
        check_certificate_key(cert)
    assert info.value.detail["key_type"] == "DSA"


def test_chain_roles_say_which_certificate_is_weak() -> None:
    good = ec.generate_private_key(ec.SECP256R1())
    leaf = _certificate(good, good, name="leaf")
    weak_ca = _certificate(_RSA_1024, _RSA_1024, ca=True, name="weak CA")
    anchor = _certificate(_RSA_2048, _RSA_2048, ca=True, name="root")
    check_chain_keys([leaf, anchor])
    for chain, role in (
        ([leaf, weak_ca, anchor], "intermediate CA"),
        ([leaf, weak_ca], "trust anchor"),
        ([weak_ca], "signer"),
    ):
        with pytest.raises(CertificateKeyWeak) as info:
            check_chain_keys(chain)
        assert info.value.detail["role"] == role
        assert info.value.detail["subject"] == "CN=weak CA"
        assert info.value.detail["bits"] == 1024


# --- low-S -----------------------------------------------------------------------------------


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1()])
def test_curve_orders_are_right_and_both_forms_verify(curve: ec.EllipticCurve) -> None:
    """``(r, n - s)`` verifies only when ``n`` is the real group order: this proves the table."""
    key = ec.generate_private_key(curve)
    order = curve_order(curve)
    assert set(ADMITTED_CURVES) == {"secp256r1", "secp384r1"}
    for index in range(20):
        data = b"message %d" % index
        r, s = utils.decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        twin = utils.encode_dss_signature(r, order - s)
        key.public_key().verify(twin, data, ec.ECDSA(hashes.SHA256()))
        low, high = min(s, order - s), max(s, order - s)
        assert is_low_s(curve, low) and not is_low_s(curve, high)
        check_low_s(curve, low)
        with pytest.raises(SignatureNonCanonical) as info:
            check_low_s(curve, high)
        assert info.value.code == "SIGNATURE_NON_CANONICAL"
        # a wrong order would make the twin invalid: cryptography is the witness
        with pytest.raises(InvalidSignature):
            key.public_key().verify(
                utils.encode_dss_signature(r, order - s - 1), data, ec.ECDSA(hashes.SHA256())
            )


def test_low_s_helpers_normalise_der_and_raw_forms() -> None:
    curve = ec.SECP256R1()
    key = ec.generate_private_key(curve)
    order = curve_order(curve)
    seen_high = 0
    for index in range(64):
        data = b"x%d" % index
        der = key.sign(data, ec.ECDSA(hashes.SHA256()))
        r, s = utils.decode_dss_signature(der)
        high = utils.encode_dss_signature(r, max(s, order - s))
        fixed = low_s_der(curve, high)
        assert utils.decode_dss_signature(fixed) == (r, min(s, order - s))
        key.public_key().verify(fixed, data, ec.ECDSA(hashes.SHA256()))
        raw = r.to_bytes(32, "big") + max(s, order - s).to_bytes(32, "big")
        assert low_s_raw(curve, raw) == r.to_bytes(32, "big") + min(s, order - s).to_bytes(
            32, "big"
        )
        assert low_s_raw(curve, raw[:-1]) == raw[:-1]  # not r||s: left for the verifier to refuse
        seen_high += s > order // 2
    assert 0 < seen_high < 64, "cryptography signs in both forms: the reason for the rule"


def test_curves_outside_the_policy_have_no_low_s_form() -> None:
    with pytest.raises(CertificateKeyWeak):
        curve_order(ec.SECP521R1())
    assert key_facts(ec.generate_private_key(ec.SECP521R1()).public_key()).key_type is KeyType.EC
