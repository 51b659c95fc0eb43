"""Shared test support (not fixtures): the dev PKI wrapper, sample paths, constants.

Imported as ``from support import ...``; fixtures live in conftest.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gateway.dev.pki import CAPaths, IssuedPaths, init_ca, issue
from gateway.evidence.nodekey import NodeKey
from gateway.trust.signing import SigningKey
from gateway.trust.store import TrustStore
from gateway.trust.verification import Verifier

DATA = Path(__file__).parent / "data"
INTEROP = DATA / "interop"
ATTACKS = DATA / "attacks"

#: well-formed field samples (README in tests/data/interop)
DOCUMENT_SAMPLES = [
    "edoc_update.edxml",
    "edoc_replacement.edxml",
    "edoc_revocation.edxml",
    "edoc_relayed_by_hub.edxml",
]
STATUS_SAMPLES = sorted(p.name for p in INTEROP.glob("status*.edxml"))
MALFORMED_SAMPLES = ["edoc.edxml", "edoc_new.edxml"]

#: senders of the samples
G22 = "000.00.00.G22"  # Văn phòng Chính phủ (sender of edoc_update/replacement/revocation)
H41 = "000.00.00.H41"  # UBND Tỉnh Nghệ An (sender of status samples)


@dataclass
class DevPKI:
    """A dev PKI in a temporary folder, with issued agency certificates."""

    ca: CAPaths
    issued: dict[str, IssuedPaths] = field(default_factory=dict)
    _keys: dict[str, SigningKey] = field(default_factory=dict)
    _node_keys: dict[str, NodeKey] = field(default_factory=dict)

    @property
    def directory(self) -> Path:
        return self.ca.directory

    def issue(self, name: str, **kwargs: object) -> IssuedPaths:
        if name not in self.issued:
            if name.count(".") == 3:
                self.issued[name] = issue(self.directory, agency=name, **kwargs)  # type: ignore[arg-type]
            else:
                self.issued[name] = issue(self.directory, node=name, **kwargs)  # type: ignore[arg-type]
        return self.issued[name]

    def key(self, name: str, **kwargs: object) -> SigningKey:
        if name not in self._keys:
            paths = self.issue(name, **kwargs)
            self._keys[name] = SigningKey.load(paths.key, paths.cert)
        return self._keys[name]

    def node_key(self, name: str) -> NodeKey:
        """The NodeKey of an agency or a node; a node named ``*-rsa`` gets RSA-2048, else P-256."""
        if name not in self._node_keys:
            key_type = "rsa2048" if name.endswith("-rsa") or name.count(".") == 3 else "ec-p256"
            paths = self.issue(name, key_type=key_type)
            self._node_keys[name] = NodeKey.load(paths.key, paths.cert)
        return self._node_keys[name]

    def trust(self, *, with_intermediate: bool = False) -> TrustStore:
        extra = [self.ca.intermediate_cert] if with_intermediate else []
        return TrustStore.from_pem_files(
            [self.ca.root_cert], crls=[self.ca.crl], intermediates=extra
        )

    def verifier(self, *, with_intermediate: bool = False, **policy: object) -> Verifier:
        from gateway.trust.verification import VerifyPolicy

        trust = self.trust(with_intermediate=with_intermediate)
        return Verifier(trust, VerifyPolicy(**policy))  # type: ignore[arg-type]


def make_pki(root: Path) -> DevPKI:
    return DevPKI(ca=init_ca(root / "pki"))


def sample(name: str) -> bytes:
    return (INTEROP / name).read_bytes()
