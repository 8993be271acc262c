"""Build the English text corpora the transformer demo and benchmarks use, from Python's own standard library.

Nothing is downloaded: the sentences are the docstrings of the standard library's modules, classes and functions,
and of numpy's and scipy's (compress's own dependencies; read with `ast`, nothing imported), plus the prose of
`pydoc_data.topics` (the language reference topics `help()` shows). Python is PSF-2.0, numpy and scipy BSD-3-Clause;
both allow redistribution with the notice, which compress/data/TEXT_SOURCES.md carries.

Writes, beside `--out` (default compress/data/):
  english_sentences.txt  one sentence a line, deduplicated, shuffled with seed 0 (the embedding task's corpus)
  stdlib_topics.tsv      text<TAB>label: sentences from the docstrings of 6 standard-library areas, the label being
                         the area (a real-text classification task with a ceiling below 100%)

    python benchmarks/make_text_corpus.py [--out DIR]
"""
from __future__ import annotations

import argparse
import ast
import random
import re
import sysconfig
from pathlib import Path

AREAS = {"email": ["email", "smtplib.py", "imaplib.py", "poplib.py", "mailbox.py"],
         "web": ["http", "urllib", "html", "xmlrpc", "wsgiref", "ftplib.py"],
         "concurrency": ["asyncio", "concurrent", "multiprocessing", "threading.py", "queue.py", "selectors.py"],
         "testing": ["unittest", "doctest.py", "pdb.py", "bdb.py", "trace.py", "timeit.py"],
         "files": ["pathlib.py", "shutil.py", "tarfile.py", "zipfile.py", "os.py", "tempfile.py", "glob.py",
                   "fileinput.py", "gzip.py", "lzma.py", "bz2.py"],
         "text": ["re", "string.py", "textwrap.py", "difflib.py", "codecs.py", "csv.py", "json", "tokenize.py"]}

SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def sentences(text: str) -> list[str]:
    """Prose sentences of 6-40 words, mostly letters: code, tables and argument lists are dropped."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        if re.search(r"^\s*(>>>|\$ |\.\. )", para, re.M):
            continue
        flat = " ".join(para.split())
        for s in SENTENCE.split(flat):
            words = s.split()
            letters = sum(c.isalpha() or c == " " for c in s)
            if 6 <= len(words) <= 40 and letters >= 0.85 * len(s) and s[0].isupper() and s[-1] in ".!?":
                out.append(s)
    return out


def docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except SyntaxError:
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                found.extend(sentences(doc))
    return found


def files_of(stdlib: Path, name: str) -> list[Path]:
    p = stdlib / name
    return sorted(p.rglob("*.py")) if p.is_dir() else [p]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "compress" / "data")
    args = ap.parse_args()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "idlelib", "lib2to3", "site-packages", "turtledemo", "tkinter", "distutils", "ensurepip"}
    pool: list[str] = []
    for path in sorted(stdlib.rglob("*.py")):
        if not skip.intersection(path.relative_to(stdlib).parts):
            pool.extend(docstrings(path))
    import importlib.util

    for package in ("numpy", "scipy"):
        root = Path(importlib.util.find_spec(package).origin).parent
        for path in sorted(root.rglob("*.py")):
            if not {"tests", "_vendor", "vendored"}.intersection(path.relative_to(root).parts):
                pool.extend(docstrings(path))
    from pydoc_data.topics import topics

    for text in topics.values():
        pool.extend(sentences(text))
    unique = sorted(set(pool))
    random.Random(0).shuffle(unique)
    (args.out / "english_sentences.txt").write_text("\n".join(unique) + "\n", encoding="utf-8")
    rows, seen = [], set()
    for label, names in AREAS.items():
        for name in names:
            for path in files_of(stdlib, name):
                for s in docstrings(path):
                    if s not in seen and "\t" not in s:
                        seen.add(s)
                        rows.append((s, label))
    random.Random(0).shuffle(rows)
    (args.out / "stdlib_topics.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows),
                                                encoding="utf-8")
    print(f"{len(unique)} sentences, {len(rows)} labelled rows -> {args.out}")


if __name__ == "__main__":
    main()
