"""Full-text search over a corpus of documents: an Okapi BM25 index (k1 = 1.5, b = 0.75)
and the `search` and `lookup` tools made from it.

A `Corpus` is documents (title, text, source) read from a folder of .md/.txt files, given
as a list (a benchmark's generated encyclopedia), or, by default, the documentation aios
ships: the docstrings of its modules and its README. Invariant: a corpus is loaded and
indexed once, on first use, by whichever thread gets there first; after that it is
read-only, so searches need no lock."""
from __future__ import annotations

import ast
import difflib
import importlib.util
import math
import pkgutil
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aios.errors import InvalidSyscall, NotFound
from aios.tools.registry import ToolSpec, tool

K1 = 1.5                 # term-frequency saturation
B = 0.75                 # document-length normalisation
MAX_K = 20               # results one search returns at most
MAX_QUERY_CHARS = 1000
SNIPPET_CHARS = 240
TIMEOUT_S = 30.0         # a tool call's bound, the first one's loading and indexing included
STOP_WORDS = frozenset("""a an and are as at be but by for from has have if in into is it its no not of
on or s so such t that the their then there these they this to was were what when where which who will
with""".split())   # s and t: what "journal's" and "don't" leave
_WORD = re.compile(r"[^\W_]+")   # runs of letters and digits, in any script


def tokenize(text: str) -> list[str]:
    """The lowercased, stemmed words of `text`, stop words left out."""
    return [stem(w) for w in _WORD.findall(text.lower()) if w not in STOP_WORDS]


def stem(word: str) -> str:
    """A light English stemmer (plurals, -ed, -ing), so that "commits" finds "commit" and
    "grouped" finds "group". Conservative: words of three letters stay whole, and queries and
    documents go through the same rules, so a name that gets cut still finds itself."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("sses", "xes", "ches", "shes", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix in ("ing", "ed"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix) and any(c in "aeiouy" for c in word[:-len(suffix)]):
            word = word[:-len(suffix)]
            if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "lsz":   # running -> run
                word = word[:-1]
            elif word.endswith("u"):   # queued -> queue
                word += "e"
            break
    return word


@dataclass(frozen=True, slots=True)
class Document:
    title: str
    text: str
    source: str = ""    # where it came from: a file (with its section), a module, a URL


@dataclass(frozen=True, slots=True)
class Hit:
    doc_id: int          # the document's position in the corpus
    score: float


class BM25Index:
    """Okapi BM25 over documents' titles and texts (the title counts as part of the text).

    score(d, q) = sum over the distinct terms t of q of
        idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * len(d) / avg_len))
    idf(t) = ln(1 + (N - n(t) + 0.5) / (n(t) + 0.5)), which stays positive even for a term
    in most documents. Equal scores rank in corpus order, so results are deterministic."""

    def __init__(self, documents: list[Document], k1: float = K1, b: float = B):
        self.k1, self.b = k1, b
        self.num_docs = len(documents)
        self.doc_lens: list[int] = []
        self.postings: dict[str, list[tuple[int, int]]] = {}   # term -> (doc_id, tf), by doc_id
        for doc_id, doc in enumerate(documents):
            terms = tokenize(f"{doc.title}\n{doc.text}")
            self.doc_lens.append(len(terms))
            for term, tf in Counter(terms).items():
                self.postings.setdefault(term, []).append((doc_id, tf))
        self.avg_len = sum(self.doc_lens) / self.num_docs if self.num_docs else 0.0

    def idf(self, term: str) -> float:
        n = len(self.postings.get(term, ()))
        return math.log(1 + (self.num_docs - n + 0.5) / (n + 0.5))

    def search(self, query: str, k: int) -> list[Hit]:
        """The k best documents with a positive score, best first."""
        scores: dict[int, float] = {}
        for term in dict.fromkeys(tokenize(query)):   # distinct terms, in query order
            idf = self.idf(term)
            for doc_id, tf in self.postings.get(term, ()):
                norm = self.k1 * (1 - self.b + self.b * self.doc_lens[doc_id] / self.avg_len)
                scores[doc_id] = scores.get(doc_id, 0.0) + idf * tf * (self.k1 + 1) / (tf + norm)
        best = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:k]
        return [Hit(doc_id, score) for doc_id, score in best]


class Corpus:
    """Documents to search, under a name for people (logs, descriptions). `load` runs once,
    on first use (from any thread)."""

    def __init__(self, load: Callable[[], Iterable[Document]], name: str):
        self.name = name
        self._load = load
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None

    @classmethod
    def from_documents(cls, documents: Iterable[Document | Mapping[str, Any]], name: str = "documents") -> Corpus:
        """A corpus of given documents: Document objects or {title, text, source} dicts."""
        docs = [d if isinstance(d, Document) else Document(str(d["title"]), str(d["text"]), str(d.get("source", "")))
                for d in documents]
        return cls(lambda: docs, name)

    @classmethod
    def from_folder(cls, folder: str | Path) -> Corpus:
        """The .md and .txt files under `folder` (hidden ones skipped), read on first use; a
        markdown file gives one document per `#` or `##` section, titled by its heading."""
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise NotFound(f"no folder {str(root)!r} to search", field="corpus",
                           hint="point it at a folder of .md or .txt files")
        return cls(lambda: list(_read_folder(root)), str(root))

    @classmethod
    def aios_docs(cls) -> Corpus:
        """The documentation aios ships: each module's docstring (titled by the module's
        name) and the sections of the README, when it sits next to the package."""
        return cls(lambda: list(_aios_documents()), "aios documentation")

    @property
    def documents(self) -> list[Document]:
        return self._load_once().documents

    def search(self, query: str, k: int = 3) -> list[tuple[Document, float]]:
        """The k best documents for `query` with their BM25 scores, best first."""
        loaded = self._load_once()
        return [(loaded.documents[h.doc_id], h.score) for h in loaded.index.search(query, k)]

    def lookup(self, title: str) -> Document | None:
        """The first document whose title is `title`, ignoring case and spacing."""
        loaded = self._load_once()
        doc_id = loaded.titles.get(_norm_title(title))
        return None if doc_id is None else loaded.documents[doc_id]

    def close_titles(self, title: str, n: int = 5) -> list[str]:
        """Titles that look like `title`, the closest first."""
        by_norm = {_norm_title(d.title): d.title for d in reversed(self.documents)}
        return [by_norm[t] for t in difflib.get_close_matches(_norm_title(title), list(by_norm), n=n, cutoff=0.6)]

    def _load_once(self) -> _Loaded:
        loaded = self._loaded
        if loaded is None:
            with self._lock:
                if self._loaded is None:
                    docs = list(self._load())
                    titles: dict[str, int] = {}
                    for doc_id, doc in enumerate(docs):
                        titles.setdefault(_norm_title(doc.title), doc_id)
                    self._loaded = _Loaded(docs, BM25Index(docs), titles)
                loaded = self._loaded
        return loaded


@dataclass(frozen=True, slots=True)
class _Loaded:
    documents: list[Document]
    index: BM25Index
    titles: dict[str, int]   # normalised title -> the first document with it


def _norm_title(title: str) -> str:
    return " ".join(title.replace("_", " ").split()).casefold()


# ---- reading documents

_HEADING = re.compile(r"^(#{1,2})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def split_markdown(text: str, title: str, source: str) -> list[Document]:
    """One document per `#` or `##` section, titled by its heading (deeper headings stay
    in their section; `#` lines inside fenced code are not headings). Text before the
    first heading is titled `title`; sections with no text are left out."""
    docs: list[Document] = []
    heading, lines, is_code = title, [], False

    def close() -> None:
        body = "\n".join(lines).strip()
        if body:
            docs.append(Document(heading, body, f"{source}#{heading}" if heading != title else source))

    for line in text.splitlines():
        if _FENCE.match(line):
            is_code = not is_code
        match = None if is_code else _HEADING.match(line)
        if match:
            close()
            heading, lines = match.group(2), []
        else:
            lines.append(line)
    close()
    return docs


def _read_folder(root: Path) -> Iterator[Document]:
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in (".md", ".txt") and p.is_file()):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix.lower() == ".md":
            yield from split_markdown(text, path.stem, str(rel))
        elif text.strip():
            yield Document(path.stem, text.strip(), str(rel))


# pyproject maps these folders under `aios.`; an editable install leaves them out of
# aios/, so they are found by name (find_spec imports only `aios` itself)
_MAPPED_PACKAGES = ("agents", "benchmarks", "cli", "sandbox", "tools")


def _aios_documents() -> Iterator[Document]:
    """Module docstrings, read from the source files with `ast` (nothing is imported, so
    reading them runs no module code), then the README's sections."""
    import aios
    root = Path(aios.__file__).parent
    packages = {"aios": root}
    for name in _MAPPED_PACKAGES:
        spec = importlib.util.find_spec(f"aios.{name}")
        if spec is not None and spec.submodule_search_locations:
            packages[f"aios.{name}"] = Path(list(spec.submodule_search_locations)[0])
    seen: set[str] = set()
    for name, folder in packages.items():
        for module, file in _walk(name, folder):
            if module in seen:
                continue
            seen.add(module)
            try:
                doc = ast.get_docstring(ast.parse(file.read_text(encoding="utf-8")))
            except (OSError, SyntaxError, UnicodeDecodeError):
                continue
            if doc:   # the source as the installed layout names it: aios/storage/journal.py
                source = module.replace(".", "/") + ("/__init__.py" if file.name == "__init__.py" else ".py")
                yield Document(module, doc, source)
    readme = root.parent / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace")
        if text.lstrip().startswith("# aios"):   # ours, not some other project's
            yield from split_markdown(text, "aios", "README.md")


def _walk(package: str, folder: Path) -> Iterator[tuple[str, Path]]:
    """The package and its modules, depth first, as (dotted name, source file)."""
    init = folder / "__init__.py"
    if init.is_file():
        yield package, init
    for info in pkgutil.iter_modules([str(folder)]):
        name = f"{package}.{info.name}"
        if info.ispkg:
            yield from _walk(name, folder / info.name)
        elif (file := folder / f"{info.name}.py").is_file():
            yield name, file


# ---- the tools

def search_tool(corpus: Corpus, name: str = "search", description: str | None = None) -> ToolSpec:
    """A tool `search(query, k=3)` over `corpus`: the k best documents by BM25, each as
    {title, snippet, score, source}. `description` replaces the default one the LLM sees."""
    def search(query: str, k: int = 3) -> list[dict[str, Any]]:
        """Searches the documents for words of the query and returns the best matches, best
        first, each with its title, a snippet around the matching words, its BM25 score and
        its source. Use specific words: names, terms, rare words rank best.

        Args:
            query: words to look for, e.g. "journal group commit"
            k: how many results to return, 1 to 20
        """
        if not query.strip():
            raise InvalidSyscall("the query is empty", field="arguments.query",
                                 hint="give the words to look for")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidSyscall(f"the query is over {MAX_QUERY_CHARS} characters", field="arguments.query",
                                 hint="a few specific words search best")
        if not 1 <= k <= MAX_K:
            raise InvalidSyscall(f"k must be between 1 and {MAX_K}, got {k}", field="arguments.k")
        terms = set(tokenize(query))
        return [{"title": doc.title, "snippet": snippet(doc.text, terms), "score": round(score, 4),
                 "source": doc.source} for doc, score in corpus.search(query, k)]
    return tool(search, name=name, description=description, timeout_s=TIMEOUT_S)


def lookup_tool(corpus: Corpus, name: str = "lookup", description: str | None = None) -> ToolSpec:
    """A tool `lookup(title)` over `corpus`: the whole document with that title (case and
    spacing ignored); NotFound, with the closest titles in the hint, if there is none."""
    def lookup(title: str) -> dict[str, str]:
        """Returns the full text of the document with exactly this title (case does not
        matter). Use search first to find titles.

        Args:
            title: the document's title, as search returned it
        """
        doc = corpus.lookup(title)
        if doc is None:
            close = corpus.close_titles(title)
            raise NotFound(f"no document titled {title!r}", field="arguments.title",
                           hint=f"close titles: {', '.join(close)}" if close else "search for it first")
        return {"title": doc.title, "text": doc.text, "source": doc.source}
    return tool(lookup, name=name, description=description, timeout_s=TIMEOUT_S)


def snippet(text: str, terms: set[str], max_chars: int = SNIPPET_CHARS) -> str:
    """About max_chars of `text` around the densest run of query terms, whitespace
    collapsed; `…` marks a cut."""
    words = list(_WORD.finditer(text))
    hits = [i for i, w in enumerate(words) if stem(w.group().lower()) in terms]
    start = 0
    if hits:   # the hit that begins the window (~max_chars/6 words) holding the most hits
        span = max(1, max_chars // 6)
        first, most, end = hits[0], 0, 0
        for n, i in enumerate(hits):
            while end < len(hits) and hits[end] < i + span:
                end += 1
            if end - n > most:
                first, most = i, end - n
        start = words[max(0, first - 3)].start()   # a few words of lead-in
    piece = " ".join(text[start:start + max_chars * 2].split())
    cut = len(piece) > max_chars or start + max_chars * 2 < len(text)
    if len(piece) > max_chars:
        piece = piece[:max_chars].rsplit(" ", 1)[0]
    return ("…" if start > 0 else "") + piece + ("…" if cut else "")
