"""One-off generator for ``models/data/sentences.txt`` (the MiniLM calibration / eval corpus).

Run ``python -m qcc.models._make_sentences`` to regenerate.  The corpus is real English prose
that ships offline on a Debian machine: the license texts in ``/usr/share/common-licenses`` and
the docstrings of Python standard-library modules.  The output is committed, so the zoo never
depends on what this machine's Python version happens to document; this script only records
how the file was made.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import warnings
from pathlib import Path

LICENSE_DIR = Path("/usr/share/common-licenses")
OUT_PATH = Path(__file__).resolve().parent / "data" / "sentences.txt"

# Prose-heavy stdlib modules; importing them has no side effects.
STDLIB_MODULES = [
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "bz2", "calendar", "cmd",
    "codecs", "collections", "colorsys", "concurrent.futures", "configparser", "contextlib",
    "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "dis", "doctest", "email",
    "enum", "filecmp", "fileinput", "fnmatch", "fractions", "ftplib", "functools", "getopt",
    "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http.client", "http.server",
    "imaplib", "importlib", "inspect", "io", "ipaddress", "itertools", "json", "logging",
    "lzma", "mailbox", "mimetypes", "multiprocessing", "numbers", "operator", "optparse",
    "os", "pathlib", "pdb", "pickle", "pkgutil", "platform", "plistlib", "poplib", "pprint",
    "profile", "pstats", "queue", "quopri", "random", "re", "reprlib", "sched", "secrets",
    "selectors", "shelve", "shlex", "shutil", "signal", "smtplib", "socket", "socketserver",
    "sqlite3", "ssl", "statistics", "string", "struct", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "timeit", "tokenize", "trace", "traceback", "turtle", "types",
    "typing", "unittest", "urllib.parse", "urllib.request", "uuid", "warnings", "wave",
    "weakref", "xml.dom.minidom", "xml.etree.ElementTree", "zipfile", "zipimport", "zoneinfo",
]

# Split after ., ? or ! followed by whitespace and an upper-case letter (keeps "e.g. foo" whole).
_SPLIT = re.compile(r"(?<=[.?!])\s+(?=[A-Z\"'(])")
# Anything that smells of code, markup, paths or addresses.
_BAD = re.compile(
    r"(>>>|\.\.\.|::|==|->|=>|[{}\[\]<>=_`*#\\|@$^~]|https?:|www\.|\.py\b|\.com\b|\.org\b"
    r"|\(\)|\w\(|\w\.\w|\b[a-z]+[A-Z]\w*)"
)
_ABBREV = re.compile(r"\b(e\.g|i\.e|etc|vs|cf|Mr|Dr|St|No|Inc)\.$")


def _paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs with internal line breaks joined."""
    paras = re.split(r"\n\s*\n", text)
    return [" ".join(line.strip() for line in p.splitlines()) for p in paras]


def _sentences_from(text: str) -> list[str]:
    out = []
    for para in _paragraphs(text):
        # Drop section headers, ALL-CAPS blocks, indented code, bullet lists and tables.
        if not para or para.upper() == para:
            continue
        pieces = _SPLIT.split(re.sub(r"\s+", " ", para).strip())
        merged: list[str] = []
        for piece in pieces:
            # Re-join splits that happened after an abbreviation such as "e.g.".
            if merged and _ABBREV.search(merged[-1]):
                merged[-1] += " " + piece
            else:
                merged.append(piece)
        out.extend(merged)
    return out


def _clean(s: str) -> str | None:
    s = s.strip().strip('"').strip()
    words = s.split()
    if not 8 <= len(words) <= 40:
        return None
    if not (s[0].isupper() and s[-1] in ".?!"):
        return None
    if _BAD.search(s) or s.count("(") != s.count(")") or s.count('"') % 2:
        return None
    # Numbered clauses and sentences dominated by identifiers / numbers are not prose.
    if re.match(r"^\d|^[a-z]\)", s) or sum(w.isalpha() for w in words) < 0.7 * len(words):
        return None
    if any(w.isupper() and len(w) > 3 for w in words[:3]):  # "WARRANTY OF ..." style shouting
        return None
    if s.upper() == s or " -- " in s or "(c)" in s.lower():
        return None
    # "Keyword Arguments: ..." / "Timing: ..." labels and list markers glued on the end ("... b.").
    if re.match(r"^[A-Z]\w*( \w+)?: ", s) or re.search(r"[.;] [a-z]\.$", s):
        return None
    return s


def _license_texts() -> list[str]:
    texts = []
    for path in sorted(LICENSE_DIR.iterdir()):
        if path.is_file() and not path.is_symlink():
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
    return texts


def _docstrings() -> list[str]:
    texts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in STDLIB_MODULES:
            try:
                mod = importlib.import_module(name)
            except Exception:  # noqa: BLE001 - optional modules (turtle needs tkinter)
                continue
            objs = [mod] + [getattr(mod, a) for a in dir(mod) if not a.startswith("_")]
            for obj in objs:
                doc = inspect.getdoc(obj) if (inspect.ismodule(obj) or inspect.isclass(obj)
                                              or inspect.isroutine(obj)) else None
                if doc and (obj is mod or getattr(obj, "__module__", None) == mod.__name__):
                    texts.append(doc)
                if inspect.isclass(obj) and getattr(obj, "__module__", None) == mod.__name__:
                    for m in vars(obj).values():
                        if inspect.isroutine(m) and m.__doc__:
                            texts.append(inspect.cleandoc(m.__doc__))
    return texts


def build() -> list[str]:
    """All cleaned, de-duplicated sentences in source order."""
    seen: set[str] = set()
    result = []
    for text in _license_texts() + _docstrings():
        for raw in _sentences_from(text):
            s = _clean(raw)
            if s is None:
                continue
            key = re.sub(r"\W+", " ", s.lower()).strip()
            if key not in seen:
                seen.add(key)
                result.append(s)
    return result


def main() -> int:
    sents = build()
    OUT_PATH.parent.mkdir(parents=True, exist_ok=True)
    OUT_PATH.write_text("\n".join(sents) + "\n", encoding="utf-8")
    print(f"wrote {len(sents)} sentences to {OUT_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
