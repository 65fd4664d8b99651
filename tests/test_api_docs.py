"""Every public name of ``refimpl.__all__`` has a numpydoc docstring.

Callables and classes need the sections ``Parameters`` (when they take any; a dataclass may
list its fields under ``Attributes`` instead), ``Returns`` (functions) and ``Examples``, each
as a numpydoc header (the title, then a line of dashes).
Exception classes need only a one-paragraph docstring. The names are resolved through
the package's lazy loader, so names added to ``refimpl._PUBLIC`` are covered as they appear.
"""
import dataclasses
import inspect
import re
import types

import pytest

import refimpl as ri

NAMES = [n for n in ri.__all__ if n != "__version__"]


def _resolve(name):
    """The documented object: a callable module (``refimpl.audit``) stands for its function of
    the same name, which its ``__call__`` runs."""
    obj = getattr(ri, name)
    if isinstance(obj, types.ModuleType):
        obj = getattr(obj, name)
    return obj


def _has_section(doc, title):
    return re.search(rf"^\s*{title}\s*\n\s*-{{{len(title)}}}\s*$", doc, re.MULTILINE) is not None


def _takes_parameters(obj):
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):         # no introspectable signature: assume it takes some
        return True
    return any(p.name not in ("self", "cls") for p in sig.parameters.values())


def _is_exception(obj):
    return isinstance(obj, type) and issubclass(obj, BaseException)


def test_every_public_name_resolves():
    for name in NAMES:
        assert _resolve(name) is not None, name


@pytest.mark.parametrize("name", NAMES)
def test_public_name_has_numpydoc_sections(name):
    obj = _resolve(name)
    doc = inspect.getdoc(obj) or ""
    assert doc.strip(), f"refimpl.{name} has no docstring"
    if _is_exception(obj):
        return                              # one paragraph is enough for an exception class
    missing = []
    fields_listed = dataclasses.is_dataclass(obj) and _has_section(doc, "Attributes")
    if _takes_parameters(obj) and not _has_section(doc, "Parameters") and not fields_listed:
        missing.append("Parameters")
    if not isinstance(obj, type) and not _has_section(doc, "Returns"):
        missing.append("Returns")
    if not _has_section(doc, "Examples"):
        missing.append("Examples")
    assert not missing, f"refimpl.{name} ({inspect.getmodule(obj).__name__}): docstring lacks {missing}"


@pytest.mark.parametrize("name", [n for n in NAMES if _is_exception(_resolve(n))])
def test_exception_docstring_is_a_paragraph(name):
    doc = inspect.getdoc(_resolve(name))
    assert doc and len(doc.split()) >= 4, f"refimpl.{name}: {doc!r}"

