"""The jsonargparse message tree: the nested ``Parser key ... Problem with given class_path ...`` message of a parse
error, read back into the failing config path, its innermost message and a suggestion."""

from __future__ import annotations

import argparse
import ast
import difflib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from kd_lightning.cli.diagnose.config_sources import UNKNOWN, Segment, config_source, config_value, dotted
from kd_lightning.cli.diagnose.diagnosis import Diagnosis
from kd_lightning.cli.diagnose.imports import import_path, init_parameters, nearest_import_path


@dataclass
class _Node:
    text: str
    column: int
    children: list[_Node]


_PARSER_KEY = re.compile(r'Parser key "([^"]+)":?\s*(.*)')
_CLASS_PROBLEM = re.compile(r"Problem with given class_path '([^']+)':")
_NOT_ACCEPTED = re.compile(r"(?:Option|Key) '([^']+)' is not accepted")
_DOES_NOT_ACCEPT = re.compile(r"(?:Subcommand '[^']*' )?does not accept (?:option|nested key) '([^']+)'")
_IMPORT_PROBLEM = re.compile(r"module '([^']+)' has no attribute '([^']+)'|No module named '([^']+)'")
_NOT_SUBCLASS = re.compile(r"Import path (\S+) does not correspond to a subclass of (\w+)")
_EXPECTED = re.compile(r"Expected a <class '([^']+)'>(?:\. Got value: (.*))?")
_GIVEN_CLASS_PATH = re.compile(r"Got value: Namespace\(class_path='([^']+)'")
"""The class path of a value jsonargparse failed to import (a callable's, such as an optimizer's, is only there)."""
_SKIPPED = ("Given value", "Subtypes:", "Does not validate against any of the Union subtypes")


def _parse_tree(message: str) -> _Node:
    """Nodes by indentation; a ``- `` bullet's text column is its own, so its continuation lines are its children."""
    root = _Node("", -1, [])
    stack = [root]
    for raw in message.splitlines():
        if not raw.strip():
            continue
        column = len(raw) - len(raw.lstrip())
        text = raw.strip()
        if text.startswith("- "):
            text, column = text[2:], column + 2
        while stack[-1].column >= column:
            stack.pop()
        node = _Node(text, column, [])
        stack[-1].children.append(node)
        stack.append(node)
    return root


def _rank(node: _Node) -> int:
    if node.text.startswith(("Problem with given class_path", "Parser key")):
        return 2
    trivial = node.text.startswith("Not a valid subclass") or node.text == "Expected a <class 'NoneType'>"
    return 0 if trivial else 1


def _chain(node: _Node) -> list[_Node]:
    """The nodes from ``node`` down to the innermost real message, choosing the meaningful Union alternative."""
    kids = [child for child in node.children if not child.text.startswith(_SKIPPED)]
    errors = next((child for child in kids if child.text == "Errors:"), None)
    if errors is not None and errors.children:
        best = max(errors.children, key=_rank)  # max keeps the first of equal rank
        return [node, *_chain(best)]
    nested = [child for child in kids if child.text.startswith(("Parser key", "Problem with given class_path"))]
    if nested:
        return [node, *_chain(nested[0])]
    header = _CLASS_PROBLEM.fullmatch(node.text) or (node.text.startswith("Parser key") and node.text.endswith(":"))
    if kids and (header or (not node.text and len(kids) == 1)):
        return [node, *_chain(kids[0])]
    return [node]


def _given_value(node: _Node) -> Any:
    line = next((child.text for child in node.children if child.text.startswith("Given value:")), None)
    if line is None:
        return UNKNOWN
    text = line[len("Given value:") :].strip()
    value = _literal(text)
    return text if value is UNKNOWN and re.fullmatch(r"[^\s\[\]{}()'\"]+", text) else value


def _literal(text: str) -> Any:
    """Read a Python repr of dicts, lists and jsonargparse ``Namespace(...)`` safely (no eval); ``UNKNOWN`` if not."""

    def convert(node: ast.AST) -> Any:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Namespace":
            return {keyword.arg: convert(keyword.value) for keyword in node.keywords}
        if isinstance(node, ast.Dict):
            return {convert(k): convert(v) for k, v in zip(node.keys, node.values, strict=True) if k is not None}
        if isinstance(node, (ast.List, ast.Tuple)):
            return [convert(item) for item in node.elts]
        return ast.literal_eval(node)

    try:
        return convert(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return UNKNOWN


def describe_tree(message: str, parser: Any, args: Sequence[str]) -> Diagnosis:
    """The failing config path, innermost message and suggestion of a nested jsonargparse message."""
    chain = _chain(_parse_tree(message))[1:]
    if not chain:
        return Diagnosis(message.strip())
    segments: list[Segment] = []
    in_class, class_path, key_node = False, None, None
    for position, node in enumerate(chain[:-1]):
        key = _PARSER_KEY.fullmatch(node.text)
        problem = _CLASS_PROBLEM.fullmatch(node.text)
        if key is not None:
            segments.extend(_key_segments(key.group(1), in_class))
            in_class, key_node = False, node
        elif problem is not None:
            given = _given_value(key_node) if key_node is not None else UNKNOWN
            if given is UNKNOWN and segments:
                given = config_value(segments, args)
            if isinstance(given, list):
                segments.append(_matching_items(given, chain[position:]))
            in_class, class_path = True, problem.group(1)
    leaf = chain[-1]
    leaf_text = "\n".join([leaf.text, *(_flatten(leaf))])
    inline_key = _PARSER_KEY.fullmatch(leaf.text)
    if inline_key is not None:  # 'Parser key "config": <message>' on one line
        segments.extend(_key_segments(inline_key.group(1), in_class))
        leaf_text = inline_key.group(2) or leaf_text
    return _describe_leaf(leaf_text, segments, in_class, class_path, key_node, parser, args)


def _key_segments(key: str, in_class: bool) -> list[Segment]:
    """The segments of a dotted ``Parser key``; below a ``class_path`` node, they are its init args."""
    return ["init_args", *key.split(".")] if in_class else key.split(".")


def _flatten(node: _Node) -> Iterator[str]:
    for child in node.children:
        yield child.text
        yield from _flatten(child)


def _matching_items(items: list[Any], chain: list[_Node]) -> Segment:
    """The index of the list item that the rest of ``chain`` describes (several when ambiguous)."""
    matches = tuple(index for index, item in enumerate(items) if _follows(item, chain))
    if len(matches) == 1:
        return matches[0]
    return matches or tuple(range(len(items)))


def _follows(item: Any, chain: list[_Node]) -> bool:
    node, in_class = item, False
    for step in chain:
        text = step.text
        problem = _CLASS_PROBLEM.fullmatch(text)
        key = _PARSER_KEY.fullmatch(text)
        if isinstance(node, list):
            return True
        if problem is not None:
            if not isinstance(node, dict) or not _same_class_path(node.get("class_path"), problem.group(1)):
                return False
            in_class = True
        elif key is not None:
            for part in key.group(1).split("."):
                scope = node.get("init_args", node) if in_class and isinstance(node, dict) else node
                if not isinstance(scope, dict) or part not in scope:
                    return False
                node, in_class = scope[part], False
        elif (accepted := _NOT_ACCEPTED.search(text)) is not None:
            scope = node.get("init_args", node) if isinstance(node, dict) else None
            return isinstance(scope, dict) and accepted.group(1).split(".")[0] in scope
        elif (expected := _EXPECTED.match(text)) is not None and expected.group(2) is not None:
            return str(node) == expected.group(2).strip()
    return True


def _same_class_path(given: Any, expected: str) -> bool:
    return isinstance(given, str) and (given == expected or _type_name(given) == _type_name(expected))


def _describe_leaf(
    text: str,
    segments: list[Segment],
    in_class: bool,
    class_path: str | None,
    key_node: _Node | None,
    parser: Any,
    args: Sequence[str],
) -> Diagnosis:
    accepted = _NOT_ACCEPTED.search(text) or _DOES_NOT_ACCEPT.search(text)
    if accepted is not None:
        option = accepted.group(1)
        segments = [*segments, *_key_segments(option, in_class)]
        return _unknown_key(option, segments, class_path if in_class else None, parser, args)
    imported = _IMPORT_PROBLEM.search(text)
    given_path = _GIVEN_CLASS_PATH.search(text)
    if imported is not None and given_path is not None:  # an optimizer, a scheduler: the value, not its owner
        class_path = given_path.group(1)
    if imported is not None and class_path is not None:
        where = [*segments, "class_path"]
        nearest = nearest_import_path(class_path)
        fix = f"did you mean {nearest!r}?" if nearest else "check the spelling of the module and class names"
        detail = imported.group(0) if given_path is not None else text.splitlines()[0]
        diagnosis = Diagnosis(f"cannot import class_path {class_path!r}: {detail}", fix=fix)
        return _at(diagnosis, where, args, class_path)
    not_subclass = _NOT_SUBCLASS.search(text)
    if not_subclass is not None:
        given, base = not_subclass.groups()
        message = f"class_path {given!r} is not a subclass of {base}"
        return _at(Diagnosis(message, fix=f"give a {base} subclass"), [*segments, "class_path"], args, given)
    expected = _EXPECTED.match(text)
    if expected is not None:
        siblings = [text] if key_node is None else list(_flatten(key_node))
        kinds = list(dict.fromkeys(m.group(1) for t in siblings if (m := _EXPECTED.match(t)) is not None))
        kinds = [_type_name(kind) for kind in kinds if kind != "NoneType"] + (["null"] if "NoneType" in kinds else [])
        given = expected.group(2)
        if given is None and key_node is not None:
            value = _given_value(key_node)
            given = str(value) if value is not UNKNOWN else None
        field = next((s for s in reversed(segments) if isinstance(s, str)), "the value")
        got = f" but got {given.strip()!r}" if given is not None else ""
        message = f"expected {' or '.join(kinds) or 'another type'} for {field}{got}."
        return _at(Diagnosis(message), segments, args, given.strip() if given is not None else UNKNOWN)
    return _at(Diagnosis(text.strip()), segments, args)


def _type_name(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _unknown_key(
    option: str, segments: list[Segment], class_path: str | None, parser: Any, args: Sequence[str]
) -> Diagnosis:
    """A misspelled init arg (nearest ``__init__`` parameter) or config key (nearest key of the parser)."""
    name = option.split(".")[0]
    if class_path is not None:
        target = import_path(class_path)
        accepted = init_parameters(target) if target is not None else []
        owner = _type_name(class_path)
        message = f"{owner} does not accept the init arg {name!r}"
        where = [*segments[: len(segments) - len(option.split("."))], name]
    else:
        valid = _parser_keys(parser)
        parts = [s for s in segments if isinstance(s, str)]
        known = 0
        while known < len(parts) and ".".join(parts[: known + 1]) in valid["__all__"]:
            known += 1
        name = parts[known] if known < len(parts) else parts[-1]
        accepted = sorted(valid.get(".".join(parts[:known]), set()))
        owner = ".".join(parts[:known]) or "the config"
        message = f"{owner} has no key {name!r}" if known else f"unknown key {name!r} in the config"
        where = list(parts[: known + 1])
    nearest = difflib.get_close_matches(name, accepted, n=1, cutoff=0.5)
    shown = ", ".join(accepted[:12]) + (", ..." if len(accepted) > 12 else "")
    fix = (f"did you mean {nearest[0]!r}? " if nearest else "") + (f"accepted: {shown}" if accepted else "")
    return _at(Diagnosis(message, fix=fix or None), where, args)


def _parser_keys(parser: Any) -> dict[str, set[str]]:
    """``{"": top-level keys, "trainer": its keys, ..., "__all__": every dotted key}`` of a parser."""
    dests = [a.dest for a in getattr(parser, "_actions", ()) if a.dest and not a.dest.endswith(".help")]
    dests = [d for d in dests if d not in ("help", "print_config", argparse.SUPPRESS)]
    levels: dict[str, set[str]] = {"__all__": set()}
    for dest in dests:
        parts = dest.split(".")
        for depth in range(len(parts)):
            levels.setdefault(".".join(parts[:depth]), set()).add(parts[depth])
            levels["__all__"].add(".".join(parts[: depth + 1]))
    return levels


def _at(diagnosis: Diagnosis, segments: list[Segment], args: Sequence[str], value: Any = UNKNOWN) -> Diagnosis:
    """Fill in ``where`` (the dotted path) and ``source`` (the config file or the command line that sets it)."""
    if segments:
        diagnosis.where = dotted(segments)
        diagnosis.source = config_source(segments, args, value)
    return diagnosis
