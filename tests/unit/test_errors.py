"""The error tree: stable, unique, documented codes."""

from __future__ import annotations

import gateway.errors as errors_module
from gateway.errors import GatewayError, SchemaError, all_error_classes


def test_every_code_is_unique() -> None:
    codes = [cls.code for cls in all_error_classes()]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)


def test_every_leaf_code_is_drawn_in_the_module_docstring() -> None:
    doc = errors_module.__doc__ or ""
    for cls in all_error_classes():
        if not cls.__subclasses__() and cls is not GatewayError:
            assert cls.code in doc, cls.__name__
            assert cls.__name__ in doc, cls.__name__


def test_every_error_maps_to_an_http_status_and_a_meaning() -> None:
    for cls in all_error_classes():
        assert 400 <= cls.http_status <= 599, cls.__name__
        assert cls.meaning, cls.__name__
        assert cls.__doc__ and cls.__doc__.strip(), cls.__name__


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
