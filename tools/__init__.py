"""Tools agents call through tool syscalls: the typed registry (`tool`, `ToolSpec`,
`ToolRegistry`, `ToolContext`) and the built-in tools the daemon offers."""
from __future__ import annotations

from typing import TYPE_CHECKING

from aios.errors import ConfigError, NotFound
from aios.tools.calculator import calculator
from aios.tools.files import file_tools
from aios.tools.http import http_fetch_tool
from aios.tools.python import MAX_TIMEOUT_S, python
from aios.tools.registry import ToolContext, ToolRegistry, ToolSpec, spec_of, tool
from aios.tools.search import Corpus, search_tool

if TYPE_CHECKING:
    from aios.config import Settings

AIOS_DOCS_DESCRIPTION = ("Searches the documentation of aios, the agent operating system this agent runs on "
                         "(its modules' documentation and README), and returns the best matching sections, "
                         "best first, each with its title, a snippet, its BM25 score and its source.")


def builtin_tools(settings: Settings) -> list[ToolSpec]:
    """The tools the daemon offers, as the settings configure them: calculator, search
    (over `tools.corpus`, else the documentation aios ships), read_file, write_file,
    list_files, http_fetch (off unless `tools.http_allow` lists hosts), and python (a
    snippet in the sandbox)."""
    folder = settings.tools.corpus
    if folder is None:
        search = search_tool(Corpus.aios_docs(), description=AIOS_DOCS_DESCRIPTION)
    else:
        try:
            search = search_tool(Corpus.from_folder(folder))
        except NotFound as e:
            raise ConfigError(f"invalid setting tools.corpus: {e.message}", field="tools.corpus",
                              hint=e.hint) from None
    return [tool(calculator, timeout_s=5.0), search, *file_tools(), http_fetch_tool(settings.tools),
            tool(python, timeout_s=MAX_TIMEOUT_S + 10.0, max_concurrency=4)]


__all__ = ["ToolContext", "ToolRegistry", "ToolSpec", "builtin_tools", "spec_of", "tool"]
