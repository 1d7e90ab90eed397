"""Griffe extension for the API reference: the docstrings' Sphinx roles as links, ``Example:`` as examples.

The package's docstrings are Google style with Sphinx cross-reference roles (``:class:`~kd_lightning.Batch```,
``:func:`kd_loss```, ``:meth:`bind```). mkdocstrings renders docstrings as Markdown, where a role would show as
literal text, so each role is rewritten, once the package is loaded, into an *optional* autorefs reference to the
object's canonical path (names are resolved in the docstring's scope, as Sphinx does): a link when the target is
rendered in the reference, plain code when it is not (an optional reference never warns, so ``mkdocs build --strict``
stays quiet about targets outside the site, such as ``torch.nn.Module``).

An ``Example:`` section is read as Google style's ``Examples:`` (Napoleon accepts both; griffe reads the singular as
an admonition, which would show the doctests as quoted text).

Loaded by ``mkdocs.yml`` (``plugins.mkdocstrings.handlers.python.options.extensions``).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?P<role>class|func|meth|mod|data|attr|obj|exc):`(?P<body>[^`]+)`")
EXPLICIT_TITLE = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^<>]+)>$")
EXAMPLE_HEADER = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", flags=re.MULTILINE)
CALLABLE_ROLES = {"func", "meth"}


def objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    """``obj`` and every object defined under it (aliases, i.e. imported names, skipped)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from objects(member)


def canonical(path: str, root: griffe.Object) -> str | None:
    """The canonical path of ``path`` (where the object is defined), or ``None`` when it is not in the package."""
    try:
        found = root.modules_collection[path]
        return found.canonical_path if not found.is_alias else found.final_target.canonical_path
    except Exception:  # not loaded, external, or an alias that does not resolve: no link
        return None


def resolve(target: str, obj: griffe.Object) -> str | None:
    """A role's target as a canonical path, resolved in ``obj``'s scope; ``None`` when it cannot be."""
    name = target.lstrip(".")
    module = obj if obj.is_module else obj.module
    tries = [name]
    if target.startswith("."):
        package = module.parent if module.parent is not None else module
        tries = [f"{package.path}.{name}", f"{module.path}.{name}"]
    head, _, rest = name.partition(".")
    scopes = [obj] + ([obj.parent] if obj.parent is not None else [])
    for scope in scopes:
        try:
            tries.append(scope.resolve(head) + (f".{rest}" if rest else ""))
        except Exception:  # griffe.NameResolutionError and friends: try the next scope
            continue
    if obj.is_module:  # a bare method named in a module docstring: a member of a class of the module
        tries += [f"{cls.path}.{name}" for cls in obj.classes.values() if head in cls.members]
    for path in tries:
        found = canonical(path, obj)
        if found is not None:
            return found
    return None


def replace_roles(text: str, obj: griffe.Object) -> str:
    """Every role of ``text`` as an optional autorefs reference with a code title."""

    def replace(match: re.Match[str]) -> str:
        body = match["body"].strip()
        explicit = EXPLICIT_TITLE.match(body)
        if explicit:
            title, target = explicit["title"], explicit["target"].lstrip("~")
        else:
            target = body.lstrip("~")
            title = target.rsplit(".", 1)[-1] if body.startswith("~") else target.lstrip(".")
            if match["role"] in CALLABLE_ROLES:
                title += "()"
        identifier = resolve(target, obj) or target.lstrip(".")
        return f'<autoref identifier="{html.escape(identifier)}" optional><code>{html.escape(title)}</code></autoref>'

    return ROLE.sub(replace, text)


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring of the package once it is loaded (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in objects(pkg):
            if obj.docstring is None:
                continue
            text = EXAMPLE_HEADER.sub(r"\g<indent>Examples:", obj.docstring.value)
            obj.docstring.value = replace_roles(text, obj) if ":" in text else text
