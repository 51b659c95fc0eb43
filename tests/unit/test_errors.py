"""The error tree: stable, unique, documented codes, each with its HTTP status, and a drawing
in ``gateway/errors.py`` that matches the classes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import gateway.errors as errors_module
from gateway.errors import (
    AuthError,
    EnvelopeError,
    GatewayError,
    RelayError,
    RequestError,
    SchemaError,
    SignatureError,
    StatusError,
    XMLError,
    all_error_classes,
)

ROOT = Path(__file__).resolve().parents[2]

#: Every code a client can receive, with the HTTP status it is answered with. Codes are API:
#: a change to this list is a change to the API, and must show in review as a diff here.
CODES = [
    ("AGENCY_CODE_INVALID", 422),
    ("AUDIT_CHAIN_BROKEN", 500),
    ("AUTH_CERT_UNTRUSTED", 401),
    ("AUTH_ERROR", 403),
    ("AUTH_FORBIDDEN", 403),
    ("AUTH_HMAC_INVALID", 401),
    ("AUTH_REQUIRED", 401),
    ("AUTH_SENDER_MISMATCH", 403),
    ("AUTH_SYSTEM_AGENCY_FORBIDDEN", 403),
    ("AUTH_SYSTEM_DISABLED", 401),
    ("AUTH_SYSTEM_UNKNOWN", 401),
    ("AUTH_UNKNOWN_AGENCY", 403),
    ("CERT_EXPIRED", 403),
    ("CERT_KEY_WEAK", 403),
    ("CERT_MALFORMED", 403),
    ("CERT_NOT_VALID_AT_SIGNING", 403),
    ("CERT_REVOKED", 403),
    ("CERT_UNTRUSTED", 403),
    ("CONFIG_INVALID", 500),
    ("CRL_INVALID", 403),
    ("DATABASE_NOT_MIGRATED", 503),
    ("DATABASE_UNAVAILABLE", 503),
    ("DELIVERY_NOT_FAILED", 409),
    ("DELIVERY_NOT_FOUND", 404),
    ("DOCUMENT_CONFLICT", 409),
    ("DOCUMENT_NOT_FOUND", 404),
    ("ENVELOPE_ATTACHMENT_ENCODING", 422),
    ("ENVELOPE_DUPLICATE_ELEMENT", 422),
    ("ENVELOPE_INVALID", 422),
    ("ENVELOPE_INVALID_VALUE", 422),
    ("ENVELOPE_MANIFEST_MISMATCH", 422),
    ("ENVELOPE_MISSING_ELEMENT", 422),
    ("ENVELOPE_UNKNOWN_KIND", 422),
    ("GATEWAY_ERROR", 500),
    ("INTERNAL_ERROR", 500),
    ("NODE_NOT_READY", 503),
    ("RELAY_ENVELOPE_TAMPERED", 422),
    ("RELAY_ERROR", 400),
    ("RELAY_HOP_CHAIN_BROKEN", 422),
    ("RELAY_HOP_SIGNATURE_INVALID", 422),
    ("RELAY_MALFORMED", 400),
    ("RELAY_PEER_REFUSED", 502),
    ("RELAY_PEER_UNAVAILABLE", 503),
    ("RELAY_PEER_UNKNOWN", 403),
    ("RELAY_RECEIPT_INVALID", 502),
    ("RELAY_ROUTE_LOOP", 422),
    ("REQUEST_BODY_INVALID", 422),
    ("REQUEST_BODY_TOO_LARGE", 413),
    ("REQUEST_BUDGET_EXCEEDED", 422),
    ("REQUEST_ERROR", 422),
    ("REQUEST_HASH_FILE_MISMATCH", 400),
    ("REQUEST_HEADERS_TOO_LARGE", 431),
    ("REQUEST_JSON_TOO_DEEP", 400),
    ("REQUEST_MALFORMED", 400),
    ("REQUEST_METHOD_NOT_ALLOWED", 405),
    ("REQUEST_PARAMETERS_INVALID", 422),
    ("REQUEST_PATH_NOT_FOUND", 404),
    ("REQUEST_RECIPIENT_UNREACHABLE", 422),
    ("REQUEST_TIMEOUT", 408),
    ("REQUEST_TOO_MANY_ATTACHMENTS", 422),
    ("REQUEST_TOO_MANY_RECIPIENTS", 422),
    ("REQUEST_WRONG_PACKAGE_KIND", 422),
    ("SCHEMA_INVALID", 422),
    ("SIGNATURE_DIGEST_MISMATCH", 422),
    ("SIGNATURE_DUPLICATE_ID", 422),
    ("SIGNATURE_FORGED_HEADER", 422),
    ("SIGNATURE_INVALID", 422),
    ("SIGNATURE_MALFORMED", 422),
    ("SIGNATURE_MISPLACED", 422),
    ("SIGNATURE_MISSING", 422),
    ("SIGNATURE_NON_CANONICAL", 422),
    ("SIGNATURE_PARTIAL_COVERAGE", 422),
    ("SIGNATURE_UNSUPPORTED_ALGORITHM", 422),
    ("SIGNATURE_UNVERIFIED_REFUSED", 422),
    ("SIGNATURE_VALUE_MISMATCH", 422),
    ("SIGNATURE_WEAK_ALGORITHM", 422),
    ("SIGNATURE_WRAPPED_ENVELOPE", 422),
    ("SIGNER_AGENCY_MISMATCH", 403),
    ("SIGNER_AGENCY_UNBOUND", 403),
    ("STATUS_ERROR", 409),
    ("STATUS_NOT_ALLOWED", 403),
    ("STATUS_TARGET_UNKNOWN", 404),
    ("STATUS_TRANSITION_INVALID", 409),
    ("STORAGE_ERROR", 503),
    ("TRUST_ERROR", 403),
    ("USAGE_ERROR", 400),
    ("WORKER_FAILED", 500),
    ("XML_DOCTYPE_FORBIDDEN", 400),
    ("XML_ENTITY_DECLARATION", 400),
    ("XML_ENTITY_EXPANSION", 400),
    ("XML_ERROR", 400),
    ("XML_EXTERNAL_ENTITY", 400),
    ("XML_MALFORMED", 400),
    ("XML_PREFIX_UNDECLARED", 400),
    ("XML_TEXT_TOO_LARGE", 413),
    ("XML_TOO_DEEP", 400),
    ("XML_TOO_LARGE", 413),
    ("XML_TOO_MANY_ATTRIBUTES", 400),
    ("XML_TOO_MANY_ELEMENTS", 400),
    ("XML_TOO_MANY_NAMESPACES", 400),
]

#: the first word of every code: the subject refused (errors.py docstring, "Naming")
SUBJECTS = {
    "AGENCY", "AUDIT", "AUTH", "CERT", "CONFIG", "CRL", "DATABASE", "DELIVERY", "DOCUMENT",
    "ENVELOPE", "GATEWAY", "INTERNAL", "NODE", "RELAY", "REQUEST", "SCHEMA", "SIGNATURE",
    "SIGNER", "STATUS", "STORAGE", "TRUST", "USAGE", "WORKER", "XML",
}  # fmt: skip

#: families whose every member's code starts with the family's subject
FAMILIES: dict[type[GatewayError], str] = {
    XMLError: "XML_",
    EnvelopeError: "ENVELOPE_",
    SignatureError: "SIGNATURE_",
    AuthError: "AUTH_",
    RequestError: "REQUEST_",
    RelayError: "RELAY_",
    StatusError: "STATUS_",
}

_ROW = re.compile(
    r"^(?P<indent>(?:│   |    )*)(?:(?P<branch>[├└])── )?(?P<name>[A-Za-z]\w*)"
    r"(?:\s+(?P<code>[A-Z][A-Z0-9_]*))?(?:\s+\((?P<note>[^)]*)\))?\s*$"
)


def _drawing() -> list[tuple[int, str, str | None, str | None]]:
    """The tree in the errors.py docstring: (depth, class name, code, branch mark) per row."""
    doc = errors_module.__doc__ or ""
    block = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in block.splitlines():
        match = _ROW.match(line[4:])  # the block is indented by four spaces
        assert match, f"unreadable row of the drawing: {line!r}"
        depth = len(match["indent"]) // 4 + (1 if match["branch"] else 0)
        rows.append((depth, match["name"], match["code"], match["branch"]))
    return rows


def test_every_code_is_unique() -> None:
    codes = [cls.code for cls in all_error_classes()]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)


def test_the_codes_and_their_http_statuses_are_pinned() -> None:
    # CODES is a literal on purpose: adding, renaming or remapping a code must edit it
    actual = sorted((cls.code, cls.http_status) for cls in all_error_classes())
    assert actual == sorted(CODES)
    assert sorted(CODES) == CODES, "keep CODES sorted, so a change is a one-line diff"


def test_the_drawing_is_the_class_tree() -> None:
    rows = _drawing()
    by_name = {cls.__name__: cls for cls in all_error_classes()}
    assert [name for _, name, _, _ in rows].count("GatewayError") == 1
    assert sorted(name for _, name, _, _ in rows) == sorted(by_name), "classes drawn vs defined"
    parents: list[str] = []
    for depth, name, code, _ in rows:
        del parents[depth:]
        cls = by_name[name]
        assert code == cls.code, f"{name} is drawn with {code}, its code is {cls.code}"
        if depth == 0:
            assert cls is GatewayError
        else:
            assert len(parents) == depth, f"{name} is drawn below nothing"
            assert cls.__bases__ == (by_name[parents[-1]],), f"{name} is not a {parents[-1]}"
        parents.append(name)


def test_the_drawing_marks_each_last_child() -> None:
    rows = _drawing()
    for i, (depth, name, _, branch) in enumerate(rows[1:], start=1):
        later = [d for d, *_ in rows[i + 1 :] if d <= depth]
        is_last = not later or later[0] < depth
        assert branch == ("└" if is_last else "├"), f"{name} is drawn with {branch}"


def test_codes_name_their_subject() -> None:
    for cls in all_error_classes():
        assert re.fullmatch(r"[A-Z]+(_[A-Z0-9]+)+", cls.code), cls.code
        assert cls.code.split("_")[0] in SUBJECTS, cls.code
        for family, prefix in FAMILIES.items():
            if issubclass(cls, family):
                assert cls.code.startswith(prefix), f"{cls.__name__}: {cls.code}"


def test_every_class_writes_its_own_message_and_code() -> None:
    messages = []
    for cls in all_error_classes():
        # a class that forgets its docstring or its code would inherit neither silently
        assert "__doc__" in vars(cls) and cls.__doc__, cls.__name__
        assert "code" in vars(cls), cls.__name__
        message = cls.default_message()
        assert message.endswith("."), f"{cls.__name__}: {message!r}"
        messages.append(message)
    assert len(messages) == len(set(messages)), "two errors say the same thing"


#: code positions known to build a code outside the tree, to be fixed in the file named
PENDING: set[tuple[str, str]] = set()


def _code_literals(tree: ast.AST) -> list[str]:
    """String literals (f-strings as ``{}``) in code positions: a ``"code"`` key's value, a
    ``code=`` argument, an assignment to ``code``."""
    positions: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            positions += [
                v
                for k, v in zip(node.keys, node.values, strict=True)
                if isinstance(k, ast.Constant) and k.value == "code"
            ]
        elif isinstance(node, ast.keyword) and node.arg == "code":
            positions.append(node.value)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "code" for t in targets) and node.value:
                positions.append(node.value)
    found: list[str] = []
    for position in positions:
        for node in ast.walk(position):
            if isinstance(node, ast.JoinedStr):
                text = "".join(
                    str(v.value) if isinstance(v, ast.Constant) else "{}" for v in node.values
                )
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            else:
                continue
            # codes have an underscore: "OK" or a notice's "DELIVERED" are not refusals
            if re.fullmatch(r"[A-Z][A-Z0-9{}]*(_[A-Z0-9{}]+)+", text):
                found.append(text)
    return found


def test_no_code_is_written_outside_the_tree() -> None:
    # every code a client can receive comes from a class; a literal "NOT_FOUND" or
    # f"HTTP_{status}" in a handler escapes the pinned list above
    codes = {cls.code for cls in all_error_classes()}
    outside = []
    for folder in ("gateway", "adapters"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "errors.py" and path.parent.name == "gateway":
                continue
            where = path.relative_to(ROOT).as_posix()
            for literal in _code_literals(ast.parse(path.read_text(encoding="utf-8"))):
                if literal not in codes and (where, literal) not in PENDING:
                    outside.append((where, literal))
    assert outside == []


def test_the_scan_finds_codes_written_by_hand() -> None:
    source = (
        'body = {"code": "NOT_FOUND", "message": m}\n'
        'refuse(code=f"HTTP_{status}")\n'
        'code = {404: "NOT_FOUND"}.get(status, "HTTP_ERROR")\n'
        'ok = {"code": exc.code, "agency": f"000.00.{i:02d}.H49"}\n'
    )
    found = sorted(_code_literals(ast.parse(source)))
    assert found == ["HTTP_ERROR", "HTTP_{}", "NOT_FOUND", "NOT_FOUND"]


def test_api_error_shape() -> None:
    error = SchemaError(detail={"path": "/edXML/x"})
    assert error.to_dict() == {
        "code": "SCHEMA_INVALID",
        "message": "The package does not conform to the edXML schema.",
        "detail": {"path": "/edXML/x"},
    }


def test_all_is_pinned() -> None:
    exported = {name for name in dir(errors_module) if not name.startswith("_")}
    classes = {cls.__name__ for cls in all_error_classes()}
    assert classes <= set(errors_module.__all__)
    assert set(errors_module.__all__) <= exported
