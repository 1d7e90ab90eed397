"""``python_docs``: English prose from the documentation that every installation of this project ships, offline.

The sources, in this order: the help topics of this Python (:func:`python_help_corpus`),
then the docstrings of the standard library (``sys.stdlib_module_names``) and of :data:`PACKAGES`, each a module, its
public classes and functions and the public methods and properties of those classes, modules walked in sorted order
down to :data:`DEPTH` dotted components. They are cleaned into English sentences (:func:`clean_text`), deduplicated
(:func:`deduplicate`: a sentence whose :func:`normal_form` was seen before is dropped, so the same docstring inherited
by many classes or re-exported by many modules counts once) and cached on disk (:func:`python_docs_corpus`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import inspect
import io
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

PACKAGES = {
    "lightning": "lightning",
    "matplotlib": "matplotlib",
    "numpy": "numpy",
    "sklearn": "scikit-learn",
    "timm": "timm",
    "torch": "torch",
    "torchmetrics": "torchmetrics",
    "torchvision": "torchvision",
}
"""The installed packages whose docstrings join the standard library's (import name: distribution name): required
dependencies of this project, and numpy, which torchmetrics requires."""
DEPTH = 3
"""Modules are walked down to this many dotted components (``torch.nn.functional``)."""
SKIPPED = frozenset(
    {
        "__main__",
        "antigravity",
        "conftest",
        "distutils",
        "ensurepip",
        "idlelib",
        "lib2to3",
        "pydoc_data",
        "setup",
        "test",
        "testing",
        "tests",
        "this",
        "tkinter",
        "turtle",
        "turtledemo",
    }
)
"""Module name components never imported: scripts, modules that print or open windows on import, GUIs, tests."""
BUILD_VERSION = 1
"""Part of the cache key: raised when the collection or the cleaning rules change."""
BUILD_TIMEOUT = 600.0
"""Seconds the collection may run before it is stopped with an error."""

_FENCE = re.compile(r"^\s*```")
_DOCTEST = re.compile(r"^\s*(>>>|\.\.\.)(\s|$)")
_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::")
_COMMENT = re.compile(r"^(\s*)\.\.(\s|$)")
_UNDERLINE = re.compile(r"^\s*([-=~^*+#`'\"])\1{2,}\s*$")
_SECTION = re.compile(
    r"^\s*(args|arguments|attributes|example|examples|keyword args|keyword arguments|methods|note|notes|other "
    r"parameters|parameters|raises|references|return|returns|see also|shape|todo|warning|warnings|warns|yields?)"
    r"\s*:?\s*$",
    re.IGNORECASE,
)
_NUMPY_PARAMETER = re.compile(r"^\s*\*{0,2}[\w.]+(\s*,\s*\*{0,2}[\w.]+)*\s+:(\s|$)")
_GOOGLE_PARAMETER = re.compile(r"^\s*\*{0,2}\w+(\s*\([^)]*\))?:\s+")
_FIELD = re.compile(r"^\s*:(\w+)([^:]*):\s*")
_KEPT_DIRECTIVES = frozenset({"attention", "caution", "danger", "hint", "important", "note", "tip", "warning"})
_ROLE = re.compile(r":[\w:+-]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`_{1,2}")
_INLINE = re.compile(r"``([^`]+)``|`([^`]+)`_{0,2}")
_EMPHASIS = re.compile(r"(?<!\w)\*{1,2}([^*\s][^*]*?)\*{1,2}(?!\w)")
_FOOTNOTE = re.compile(r"\s*\[[\w#*]+\]_|\|[\w -]+\|")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WHITESPACE = re.compile(r"\s+")
_WORD = re.compile(r"^[(\"']?[A-Za-z][a-z]*(?:'[a-z]+|-[a-z]+)*[)\"']?[,.;:!?]?[)\"']?$")
_SYMBOL = re.compile(r"[^\w .,;:!?'\"()-]|_")  # neither a letter, a digit, a space nor ordinary punctuation
_NOT_LETTER = re.compile(r"[^a-z]+")


def python_help_corpus() -> list[str]:
    """The text of every help topic of this Python (``help('topics')``), one string per topic, sorted by topic name.

    Every CPython installation ships it (``pydoc_data.topics.topics``): English prose about Python, offline. It
    depends on the Python version; Python 3.11.7 gives 79 topics, 464,970 characters and 2,331 paragraphs of at least
    20 characters (:func:`text_units`).

    Example:
        >>> topics = python_help_corpus()
        >>> len(topics) > 50 and "assert" in topics[0]
        True
    """
    try:
        from pydoc_data.topics import topics
    except ImportError as error:
        raise ImportError(
            "corpus: python_help reads pydoc_data.topics, which this Python installation lacks (some Linux "
            "distributions split it into a separate package); install it or give the texts with files or texts."
        ) from error
    return [topics[name] for name in sorted(topics)]


def _literal_lines(lines: list[str]) -> list[str]:
    """The lines that are prose: code fences, doctests with their output, literal blocks (after ``::``), directives
    other than admonitions with their bodies, and reST comments become blank lines."""
    kept: list[str] = []
    skip_deeper_than: int | None = None  # the indentation of the line that opened a skipped indented block
    in_fence = in_doctest = False
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if skip_deeper_than is not None:
            if not line.strip() or indent > skip_deeper_than:
                kept.append("")
                continue
            skip_deeper_than = None
        if _FENCE.match(line):
            in_fence = not in_fence
            kept.append("")
            continue
        if in_fence:
            kept.append("")
            continue
        if _DOCTEST.match(line) or (in_doctest and line.strip()):
            in_doctest = True
            kept.append("")
            continue
        in_doctest = False
        directive = _DIRECTIVE.match(line)
        if directive or _COMMENT.match(line):
            if not (directive and directive.group(2).lower() in _KEPT_DIRECTIVES):
                skip_deeper_than = indent
            kept.append("")
            continue
        if line.rstrip().endswith("::"):
            skip_deeper_than = indent
            line = line.rstrip()[:-1]
        kept.append(line)
    return kept


def _prose_lines(text: str) -> list[str]:
    """``text``'s prose lines; blank lines where paragraphs break (headers, parameter names, field lists)."""
    lines = _literal_lines(inspect.cleandoc(text).splitlines())
    for i, line in enumerate(lines):
        if _UNDERLINE.match(line):
            lines[i] = ""
            if i > 0:
                lines[i - 1] = ""
    prose: list[str] = []
    for line in lines:
        field = _FIELD.match(line)
        if _SECTION.match(line) or _NUMPY_PARAMETER.match(line) or (field and field.group(1) in ("type", "rtype")):
            prose.append("")
        elif field or _GOOGLE_PARAMETER.match(line):
            prose.extend(["", (_FIELD if field else _GOOGLE_PARAMETER).sub("", line, count=1)])
        else:
            prose.append(line)
    return prose


def _plain(paragraph: str) -> str:
    """The paragraph with reST roles, links, inline literals, emphasis and footnote references reduced to text."""
    text = _ROLE.sub(
        lambda match: match.group(1).rsplit(".", 1)[-1] if "~" in match.group(0) else match.group(1), paragraph
    )
    text = _LINK.sub(r"\1", text)
    text = _INLINE.sub(lambda match: match.group(1) or match.group(2), text)
    text = _FOOTNOTE.sub("", _EMPHASIS.sub(r"\1", text))
    return _WHITESPACE.sub(" ", text).strip()


def is_prose(sentence: str) -> bool:
    """Whether a sentence reads as English prose: 25-600 characters, at least 5 words, an upper-case first letter and
    a final ``.``, ``!`` or ``?``, at least 95% ASCII, at least 70% plain words (no identifiers, paths or numbers)
    and at most 3% symbols outside ordinary punctuation; no doctest prompt or ``::``.

    Example:
        >>> is_prose("Return the number of items in the container."), is_prose(">>> len(x) == 3 and y[0] is None.")
        (True, False)
    """
    words = sentence.split()
    if not (25 <= len(sentence) <= 600 and len(words) >= 5 and sentence[0].isupper() and sentence[-1] in ".!?"):
        return False
    if ">>>" in sentence or "::" in sentence or not sentence[0].isascii():
        return False
    if len(sentence.encode("ascii", "ignore")) < 0.95 * len(sentence):
        return False
    symbols = len(_SYMBOL.findall(sentence))
    return symbols <= 0.03 * len(sentence) and sum(bool(_WORD.match(word)) for word in words) >= 0.7 * len(words)


def clean_text(text: str) -> list[list[str]]:
    """A docstring or help text as paragraphs of English sentences (:func:`is_prose`); code, doctests, directives,
    section headers and parameter names are dropped, reST markup reduced to its text.

    Sentences are cut as :func:`~kd_lightning.data.corpus.text_units` cuts them (after ``.``, ``!`` or ``?`` and
    whitespace), so the sentences of the joined paragraphs are exactly these.

    Example:
        >>> doc = "Add two numbers and return their sum.\\n\\n>>> add(1, 2)\\n3\\n\\nArgs:\\n    a (int): The first"
        >>> clean_text(doc + " number, ``int`` or :class:`float`.")
        [['Add two numbers and return their sum.'], ['The first number, int or float.']]
    """
    paragraphs, current = [], []
    for line in [*_prose_lines(text), ""]:
        if line.strip():
            current.append(line)
            continue
        if current:
            sentences = _SENTENCE_END.split(_plain(" ".join(current)))
            paragraphs.append([sentence for sentence in sentences if is_prose(sentence)])
            current = []
    return [paragraph for paragraph in paragraphs if paragraph]


def normal_form(text: str) -> str:
    """The key of deduplication: lower case, every run of characters other than letters one space (so whitespace,
    case, punctuation, markup and numbers do not tell two units apart).

    Example:
        >>> normal_form("Return a  32-bit *float*.") == normal_form("return a 64-bit float")
        True
    """
    return _NOT_LETTER.sub(" ", text.lower()).strip()


def deduplicate(documents: Iterable[list[list[str]]]) -> list[str]:
    """Documents of paragraphs of sentences (:func:`clean_text`) as texts, each sentence and each paragraph kept only
    at its first occurrence (by :func:`normal_form`); paragraphs are joined by a blank line, sentences by a space.

    Example:
        >>> deduplicate([[["Return the sum.", "It is a number."]], [["return the  SUM!"], ["A new sentence here."]]])
        ['Return the sum. It is a number.', 'A new sentence here.']
    """
    seen: set[str] = set()
    texts = []
    for document in documents:
        paragraphs = []
        for paragraph in document:
            kept = []
            for sentence in paragraph:
                key = normal_form(sentence)
                if key not in seen:
                    seen.add(key)
                    kept.append(sentence)
            joined = " ".join(kept)
            if kept and (len(kept) == 1 or normal_form(joined) not in seen):
                seen.add(normal_form(joined))
                paragraphs.append(joined)
        if paragraphs:
            texts.append("\n\n".join(paragraphs))
    return texts


# ----------------------------------------------------------------- collection (in a child process)
def _public(names: Iterable[str]) -> list[str]:
    return sorted(name for name in names if isinstance(name, str) and not name.startswith("_"))


def _object_docs(module: object) -> list[str]:
    """The docstrings of a module, its public classes and functions, and their public methods and properties."""
    docs = [module.__doc__]
    exported = getattr(module, "__all__", None)
    names = _public(exported if isinstance(exported, (list, tuple)) else vars(module))
    for name in names:
        try:
            value = getattr(module, name)
        except Exception:  # a lazy attribute that fails to load is left out
            continue
        if inspect.isroutine(value):
            docs.append(value.__doc__)
        elif inspect.isclass(value):
            docs.append(value.__doc__)
            members = vars(value)
            for attribute in _public(members):
                member = members[attribute]
                member = getattr(member, "__func__", member)
                if inspect.isroutine(member) or isinstance(member, property):
                    docs.append(member.__doc__)
    return [doc for doc in docs if isinstance(doc, str) and doc.strip()]


def _import_quietly(name: str) -> object | None:
    """The module, or ``None`` if importing it fails or prints."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
            module = importlib.import_module(name)
    except BaseException:  # any failure, SystemExit included, skips the module
        return None
    return None if printed.getvalue() else module


def _walk(name: str, depth: int, collected: list[str]) -> None:
    if any(part.startswith("_") or part in SKIPPED for part in name.split(".")):
        return
    module = _import_quietly(name)
    if module is None:
        return
    collected.extend(_object_docs(module))
    path = getattr(module, "__path__", None)
    if depth > 1 and path is not None:
        for info in sorted(pkgutil.iter_modules(path), key=lambda info: info.name):
            _walk(f"{name}.{info.name}", depth - 1, collected)


def _refuse(*args: object, **kwargs: object) -> bool:
    raise RuntimeError("python_docs: no browser is opened while collecting docstrings")


def collect_docstrings(roots: Sequence[str], depth: int = DEPTH) -> list[str]:
    """The raw docstrings of the modules ``roots`` and their submodules (down to ``depth`` components), in this
    order (submodules sorted by name); modules that fail to import or print are skipped. It imports in this process:
    call it in a child process (:func:`collect_in_child`)."""
    import webbrowser

    webbrowser.open = webbrowser.open_new = webbrowser.open_new_tab = _refuse
    warnings.simplefilter("ignore")
    collected: list[str] = []
    for root in roots:
        _walk(root, depth, collected)
    return collected


def _child_main(output: str, roots: list[str], depth: int) -> None:
    """Collect in this (child) process and write the docstrings to ``output`` as JSON."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # output written by extension modules on import goes nowhere
    docs = collect_docstrings(roots, depth)
    Path(output).write_text(json.dumps(docs), encoding="utf-8")


def collect_in_child(roots: Sequence[str], depth: int = DEPTH, timeout: float = BUILD_TIMEOUT) -> list[str]:
    """:func:`collect_docstrings` in a fresh Python process: no display, no browser, no standard input, a fixed hash
    seed and a time limit, so nothing imported there touches this process."""
    environment = {key: value for key, value in os.environ.items() if key not in ("DISPLAY", "WAYLAND_DISPLAY")}
    environment |= {"MPLBACKEND": "Agg", "PYTHONHASHSEED": "0", "BROWSER": "", "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory() as directory:
        output = Path(directory) / "docs.json"
        code = (
            "import importlib.util; spec = importlib.util.spec_from_file_location('corpus_docs', "
            f"{__file__!r}); module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
            f"module._child_main({str(output)!r}, {list(roots)!r}, {depth})"
        )
        try:
            done = subprocess.run(
                [sys.executable, "-c", code],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=environment,
                timeout=timeout,
                start_new_session=True,
                cwd=directory,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"python_docs: collecting the docstrings of {len(roots)} module trees took more than {timeout:.0f} s; "
                f"retry on a less loaded machine or raise the timeout."
            ) from None
        if done.returncode != 0 or not output.is_file():
            tail = done.stderr.decode("utf-8", errors="replace")[-2000:]
            raise RuntimeError(f"python_docs: the collecting process failed (exit {done.returncode}): {tail}")
        return json.loads(output.read_text(encoding="utf-8"))


# ----------------------------------------------------------------- the corpus and its cache
def stdlib_roots() -> list[str]:
    """The standard library's public top-level modules (``sys.stdlib_module_names``), sorted."""
    return sorted(name for name in sys.stdlib_module_names if not name.startswith("_") and name not in SKIPPED)


def version_key() -> dict[str, str]:
    """What the corpus depends on: the Python version and implementation, the versions of :data:`PACKAGES` and
    :data:`BUILD_VERSION`."""
    versions = {"python": f"{sys.implementation.name}-{sys.version}", "build": str(BUILD_VERSION)}
    for distribution in sorted(PACKAGES.values()):
        try:
            versions[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            versions[distribution] = "absent"
    return versions


def cache_directory() -> Path:
    """``$XDG_CACHE_HOME/kd_lightning/corpora`` (``~/.cache/kd_lightning/corpora`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kd_lightning" / "corpora"


def cache_file(cache_dir: str | Path | None = None) -> Path:
    """Where :func:`python_docs_corpus` keeps the corpus: ``<cache_dir>/python_docs-<key>.json``, the key the first 16
    hex digits of the SHA-256 of :func:`version_key` (``cache_dir`` defaults to :func:`cache_directory`)."""
    digest = hashlib.sha256(json.dumps(version_key(), sort_keys=True).encode("utf-8")).hexdigest()[:16]
    return Path(cache_dir if cache_dir is not None else cache_directory()) / f"python_docs-{digest}.json"


def build_python_docs(
    packages: Sequence[str] = tuple(PACKAGES), depth: int = DEPTH, timeout: float = BUILD_TIMEOUT
) -> list[str]:
    """The ``python_docs`` texts, built now (no cache): help topics, then the standard library, then ``packages``."""
    docs = [*python_help_corpus(), *collect_in_child([*stdlib_roots(), *sorted(packages)], depth, timeout)]
    return deduplicate(clean_text(doc) for doc in dict.fromkeys(docs))  # a repeated docstring adds nothing


def python_docs_corpus(cache_dir: str | Path | None = None, rebuild: bool = False) -> list[str]:
    """English prose from the documentation of this Python and of :data:`PACKAGES`, cleaned and deduplicated.

    One text per source document with prose left (a help topic, a docstring), its paragraphs separated by a blank line
    and each paragraph one line of sentences, so :func:`~kd_lightning.data.corpus.text_units` gives the same units
    as paragraphs or lines, and as sentences exactly the deduplicated sentences: no two units of any kind share a
    :func:`normal_form`, and a seeded split of them keeps every evaluation unit, and its duplicates, out of training.

    Provenance: the help topics of ``pydoc_data.topics`` (the ``python_help`` corpus); then the docstrings of every
    public standard-library module, then of ``lightning``, ``matplotlib``, ``numpy``, ``sklearn``, ``timm``,
    ``torch``, ``torchmetrics`` and ``torchvision``: each module with its public submodules down to three dotted
    components, its public classes and functions and their public methods and properties, imported in a child process
    in sorted order (modules that fail to import or print are skipped; GUIs, tests and scripts are never imported). It
    depends on the versions :func:`version_key` lists.

    Size, with Python 3.11.7, lightning 2.6.6, matplotlib 3.11.2, numpy 2.4.6, scikit-learn 1.9.1, timm
    1.0.31, torch 2.14.1, torchmetrics 1.9.0 and torchvision 0.29.1 (``python_help`` in brackets): 13,931 texts;
    46,258 sentences (4,031) or 34,485 paragraphs (2,331), the same as lines; 618,434 words (64,970); 3.79 million
    characters (0.43 million); 860,818 tokens of all-MiniLM-L6-v2's WordPiece (126,724), special tokens not counted.

    The first call builds it, in 13-15 s on a shared 2-core CPU (load average 4; most of it importing the modules in
    the child process), and writes it atomically to :func:`cache_file` (3.9 MB, a hash of :func:`version_key` in its
    name); later calls read it in 0.02-0.03 s.

    Args:
        cache_dir: the cache folder (default :func:`cache_directory`).
        rebuild: build even if a cached copy exists (and replace it).
    """
    versions = version_key()
    path = cache_file(cache_dir)
    if path.is_file() and not rebuild:
        with contextlib.suppress(ValueError, KeyError, TypeError):  # an unreadable copy is rebuilt
            cached = json.loads(path.read_text(encoding="utf-8"))
            if cached["versions"] == versions:
                return cached["texts"]
    texts = build_python_docs()
    _write_atomically(path, json.dumps({"versions": versions, "texts": texts}))
    return texts


def _write_atomically(path: Path, text: str) -> None:
    """Write a temporary file beside ``path``, then rename it: readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
