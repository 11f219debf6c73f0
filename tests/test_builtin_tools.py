"""The built-in tools: BM25 search over a corpus (and the default one, aios's own docs), the
file tools in the caller's own storage space through a real kernel, and http_fetch against
a real loopback server."""
from __future__ import annotations

import math
from pathlib import Path

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from aios.config import Settings, ToolsSettings
from aios.errors import ConfigError, InvalidSyscall, NotFound, PermissionDenied, ToolError
from aios.kernel import Kernel
from aios.param import MAX_PAYLOAD_BYTES
from aios.syscall import ToolSyscall
from aios.tools import builtin_tools
from aios.tools.files import file_tools, write_file
from aios.tools.http import http_fetch_tool, is_allowed
from aios.tools.search import (BM25Index, Corpus, Document, lookup_tool, search_tool, snippet,
                               split_markdown, stem, tokenize)
from tests.conftest import serve

ANIMALS = [Document("d1", "cat dog"), Document("d2", "cat cat fish bird"), Document("d3", "dog zebra")]


# ---- BM25 and the corpus

def test_tokenize_lowercases_drops_stop_words_and_stems():
    assert tokenize("The Journal's commits, grouped: QUEUED entries of 3 processes") == \
        ["journal", "commit", "group", "queue", "entry", "3", "process"]
    assert [stem(w) for w in ("running", "boxes", "status", "class", "is")] == ["run", "box", "status", "class", "is"]


def test_bm25_score_matches_a_hand_calculation():
    index = BM25Index(ANIMALS)
    # lengths count the title: d1 = [d1 cat dog] 3, d2 = 5, d3 = 3; average 11/3
    assert index.doc_lens == [3, 5, 3] and index.avg_len == pytest.approx(11 / 3)
    idf = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))                  # zebra: in 1 of 3 documents
    norm = 1.5 * (1 - 0.75 + 0.75 * 3 / (11 / 3))                  # k1 (1 - b + b |d3| / avg)
    [hit] = index.search("zebra", 5)
    assert hit.doc_id == 2 and hit.score == pytest.approx(idf * 1 * 2.5 / (1 + norm))


def test_bm25_ranks_the_rare_term_first_and_breaks_ties_in_corpus_order():
    corpus = Corpus.from_documents(ANIMALS)
    # cat is in two documents (d2 has it twice), zebra in one: the rare term wins
    assert [d.title for d, _ in corpus.search("cat zebra", 5)] == ["d3", "d2", "d1"]
    assert [d.title for d, _ in corpus.search("zebra zebra zebra", 5)] == ["d3"]   # distinct terms count once
    twins = Corpus.from_documents([{"title": "beta", "text": "same words"}, {"title": "alpha", "text": "same words"},
                                   {"title": "gamma", "text": "other"}])
    hits = twins.search("words", 5)
    assert [d.title for d, _ in hits] == ["beta", "alpha"] and hits[0][1] == hits[1][1]
    assert twins.search("the of and", 5) == [] and twins.search("absent", 5) == []


def test_search_tool_checks_arguments_and_returns_snippets():
    text = "Filler words here. " * 30 + "The zebra crossing is striped. " + "More filler. " * 30
    spec = search_tool(Corpus.from_documents([Document("Zebra", text, "zoo.md"), *ANIMALS]))
    assert spec.name == "search" and spec.signature() == "(query: string, k: integer = 3)"
    [top] = spec.fn(query="crossing", k=2)
    assert top["title"] == "Zebra" and top["source"] == "zoo.md" and isinstance(top["score"], float)
    assert "zebra crossing" in top["snippet"] and top["snippet"].startswith("…") and len(top["snippet"]) < 300
    for args, field in [({"query": "  "}, "arguments.query"), ({"query": "cat", "k": 0}, "arguments.k"),
                        ({"query": "cat", "k": 21}, "arguments.k"), ({"query": "x" * 1001}, "arguments.query")]:
        with pytest.raises(InvalidSyscall) as err:
            spec.fn(**args)
        assert err.value.field == field
    assert len(spec.fn(query="cat dog fish zebra", k=20)) == 4
    assert snippet("short text", {"absent"}) == "short text"


def test_lookup_tool_finds_titles_ignoring_case_and_suggests_close_ones():
    spec = lookup_tool(Corpus.from_documents([Document("Ada Lovelace", "Mathematician."),
                                              Document("Alan Turing", "Logician.")]))
    assert spec.fn(title="ada  lovelace") == {"title": "Ada Lovelace", "text": "Mathematician.", "source": ""}
    with pytest.raises(NotFound) as err:
        spec.fn(title="Ada Lovelase")
    assert err.value.hint == "close titles: Ada Lovelace"
    with pytest.raises(NotFound, match="no document titled"):
        spec.fn(title="Grace Hopper")


def test_markdown_splits_into_sections_by_heading():
    text = ("intro line\n\n# Kernel\nboots things\n### detail\nstays inside\n```\n# not a heading\n```\n"
            "## Empty\n\n## Scheduler ##\nqueues calls\n")
    docs = split_markdown(text, "guide", "guide.md")
    assert [(d.title, d.source) for d in docs] == [("guide", "guide.md"), ("Kernel", "guide.md#Kernel"),
                                                    ("Scheduler", "guide.md#Scheduler")]
    assert "stays inside" in docs[1].text and "# not a heading" in docs[1].text


def test_corpus_from_folder_reads_md_and_txt(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.md").write_text("# Alpha\nfirst section\n## Beta\nsecond section\n")
    (tmp_path / "b.txt").write_text("plain text about gamma\n")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "c.md").write_text("# Hidden\nsecret gamma\n")
    (tmp_path / "d.rst").write_text("gamma ignored\n")
    corpus = Corpus.from_folder(tmp_path)
    assert [(d.title, d.source) for d in corpus.documents] == [
        ("b", "b.txt"), ("Alpha", "sub/a.md#Alpha"), ("Beta", "sub/a.md#Beta")]
    assert [d.title for d, _ in corpus.search("gamma", 3)] == ["b"]
    with pytest.raises(NotFound):
        Corpus.from_folder(tmp_path / "missing")
    with pytest.raises(ConfigError) as err:
        builtin_tools(Settings(tools=ToolsSettings(corpus=tmp_path / "missing")))
    assert err.value.field == "tools.corpus"


def test_default_corpus_is_the_aios_documentation():
    corpus = Corpus.aios_docs()
    assert corpus.name == "aios documentation"
    titles = {d.title for d in corpus.documents}
    assert {"aios.kernel", "aios.storage.journal", "aios.tools.search", "aios.tools.calculator"} <= titles
    assert corpus.search("journal group commit", 3)[0][0].title == "aios.storage.journal"
    assert corpus.search("round robin time slice", 3)[0][0].title == "aios.scheduler.rr"


# ---- the file tools, through a real kernel

@pytest.mark.anyio
async def test_file_tools_act_in_the_callers_own_storage_space(make_settings):
    async with Kernel(make_settings()) as k:
        for spec in file_tools():
            k.register_tool(spec)
        a, b = await k.spawn("a"), await k.spawn("b")

        async def run(pid: int, name: str, **arguments):
            return await k.call({"kind": "tool", "tool": name, "arguments": arguments}, pid=pid)

        with anyio.fail_after(30):
            assert await run(a.pid, "write_file", path="notes/plan.md", content="go to Lisbon") == \
                {"path": "notes/plan.md", "bytes": 12, "version": 1}
            await run(a.pid, "write_file", path="todo.txt", content="pack")
            assert await run(a.pid, "read_file", path="./notes//plan.md") == \
                {"path": "notes/plan.md", "content": "go to Lisbon"}
            assert await run(a.pid, "list_files") == {"paths": ["notes/plan.md", "todo.txt"]}
            assert await run(a.pid, "list_files", prefix="notes/") == {"paths": ["notes/plan.md"]}
            # the same space the process's own storage syscalls see
            assert (await k.call({"kind": "storage", "op": "read", "path": "notes/plan.md"}, pid=a.pid))["data"] \
                == "go to Lisbon"
            await k.call({"kind": "storage", "op": "write", "path": "from-syscall", "data": "hi"}, pid=a.pid)
            assert (await run(a.pid, "read_file", path="from-syscall"))["content"] == "hi"
            # FileStore scopes by pid: another process, even of the same principal, sees none of it
            assert await run(b.pid, "list_files") == {"paths": []}
            with pytest.raises(NotFound) as err:
                await run(b.pid, "read_file", path="notes/plan.md")
            assert err.value.field == "arguments.path"
            await run(a.pid, "write_file", path="todo.txt", content="pack twice")   # overwrites
            assert (await run(a.pid, "read_file", path="todo.txt"))["content"] == "pack twice"


@pytest.mark.anyio
async def test_file_tools_refuse_paths_out_of_the_space_and_oversized_content(make_settings):
    async with Kernel(make_settings()) as k:
        for spec in file_tools():
            k.register_tool(spec)
        a = await k.spawn("a")
        with anyio.fail_after(30):
            for name, arguments, words in [
                    ("read_file", {"path": "../x"}, "climbs out"),
                    ("read_file", {"path": "/etc/passwd"}, "is absolute"),
                    ("write_file", {"path": "a\x00b", "content": "x"}, "NUL"),
                    ("write_file", {"path": "", "content": "x"}, "needs 'path'"),
                    ("list_files", {"prefix": "../"}, "climbs out")]:
                with pytest.raises(InvalidSyscall) as err:
                    await k.call({"kind": "tool", "tool": name, "arguments": arguments}, pid=a.pid)
                assert words in err.value.message
                assert err.value.field == ("arguments.prefix" if name == "list_files" else "arguments.path")
            ctx = k.tool_gate(ToolSyscall(tool="write_file", pid=a.pid)).context()   # as the kernel makes it
            with pytest.raises(InvalidSyscall, match="over the") as err:
                await write_file("big", "x" * (MAX_PAYLOAD_BYTES + 1), ctx)
            assert err.value.field == "arguments.content"
            assert (await k.call({"kind": "storage", "op": "list"}, pid=a.pid)) == {"paths": []}


@pytest.mark.anyio
async def test_the_daemons_builtin_tools_run_in_a_kernel(make_settings):
    settings = make_settings()
    specs = builtin_tools(settings)
    assert [s.name for s in specs] == ["calculator", "search", "read_file", "write_file", "list_files",
                                       "http_fetch", "python"]
    assert {s.name for s in specs if s.needs_network} == {"http_fetch"}
    assert not any(s.irreversible for s in specs)
    async with Kernel(settings) as k:
        for spec in specs:
            k.register_tool(spec)
        listing = {t["name"]: t for t in k.tool_listing()}
        assert "ctx" not in listing["write_file"]["parameters"]["properties"]
        assert "aios" in listing["search"]["description"]
        with anyio.fail_after(30):
            hits = await k.call({"kind": "tool", "tool": "search", "arguments": {"query": "journal group commit"}})
            assert hits[0]["title"] == "aios.storage.journal" and len(hits) == 3
            with pytest.raises(InvalidSyscall):   # refused when submitted: k must be an integer
                await k.submit({"kind": "tool", "tool": "search", "arguments": {"query": "x", "k": "many"}})
            with pytest.raises(PermissionDenied, match="http_fetch is off"):
                await k.call({"kind": "tool", "tool": "http_fetch", "arguments": {"url": "http://example.com/"}})
            ran = await k.call({"kind": "tool", "tool": "python",
                                "arguments": {"code": "print(sum(range(10))); open('o.txt', 'w').write('x')"}})
            assert ran["exit_code"] == 0 and ran["stdout"] == "45\n" and ran["files"] == {"o.txt": {"bytes": 1, "text": "x"}}


# ---- http_fetch, against a loopback server

def test_allow_list_matching():
    allow = ["example.com", "*.docs.org"]
    assert is_allowed("example.com", allow) and is_allowed("EXAMPLE.com.", allow)
    assert not is_allowed("www.example.com", allow) and not is_allowed("badexample.com", allow)
    assert is_allowed("a.docs.org", allow) and is_allowed("a.b.docs.org", allow)
    assert not is_allowed("docs.org", allow) and not is_allowed("evildocs.org", allow)


def make_app(release: anyio.Event) -> Starlette:
    async def hello(request: Request) -> Response:
        return PlainTextResponse("hello, agent")

    async def big(request: Request) -> Response:
        return PlainTextResponse("x" * 100_000)

    async def endless(request: Request) -> Response:
        async def chunks():   # ~6 GB unless the client stops reading; ends when it hangs up
            for _ in range(100_000):
                if await request.is_disconnected():
                    return
                yield b"y" * 65536
        return StreamingResponse(chunks(), media_type="text/plain")

    async def latin1(request: Request) -> Response:
        return Response("café".encode("latin-1"), media_type="text/plain; charset=iso-8859-1")

    async def missing(request: Request) -> Response:
        return PlainTextResponse("no such page", status_code=404)

    async def redirect(request: Request) -> Response:
        return RedirectResponse(request.query_params["to"], status_code=302)

    async def loop(request: Request) -> Response:
        return RedirectResponse("/loop", status_code=302)

    async def slow(request: Request) -> Response:
        await release.wait()
        return PlainTextResponse("late")

    return Starlette(routes=[Route(f"/{f.__name__}", f) for f in (hello, big, endless, latin1, missing,
                                                                  redirect, loop, slow)])


@pytest.mark.anyio
async def test_http_fetch_reaches_allowed_hosts_only_and_bounds_the_response():
    release = anyio.Event()
    async with serve(make_app(release)) as url:
        port = url.rsplit(":", 1)[1]
        fetch = http_fetch_tool(ToolsSettings(http_allow=["127.0.0.1"], http_max_bytes=5000,
                                              http_timeout_s=1.0)).fn
        with anyio.fail_after(30):
            page = await fetch(url=f"{url}/hello")
            assert page == {"url": f"{url}/hello", "status": 200, "content_type": "text/plain; charset=utf-8",
                            "text": "hello, agent", "truncated": False}
            assert (await fetch(url=f"{url}/latin1"))["text"] == "café"
            assert (await fetch(url=f"{url}/missing"))["status"] == 404
            cut = await fetch(url=f"{url}/big", max_bytes=1000)
            assert cut["text"] == "x" * 1000 and cut["truncated"] is True
            capped = await fetch(url=f"{url}/big", max_bytes=10**9)   # lowered to http_max_bytes
            assert len(capped["text"]) == 5000 and capped["truncated"] is True
            endless = await fetch(url=f"{url}/endless")                 # stops reading at the bound
            assert len(endless["text"]) == 5000 and endless["truncated"] is True
            followed = await fetch(url=f"{url}/redirect?to=/hello")
            assert followed["url"] == f"{url}/hello" and followed["text"] == "hello, agent"

            with pytest.raises(PermissionDenied, match="may not reach localhost") as err:
                await fetch(url=f"http://localhost:{port}/hello")
            assert "AIOS_TOOLS__HTTP_ALLOW" in err.value.hint
            # every hop is checked: a redirect to a host not allowed is not followed
            with pytest.raises(PermissionDenied, match="may not reach localhost .a redirect from"):
                await fetch(url=f"{url}/redirect?to=http://localhost:{port}/hello")
            with pytest.raises(InvalidSyscall, match="only fetches http and https"):
                await fetch(url=f"{url}/redirect?to=ftp://127.0.0.1/file")
            for bad in ("file:///etc/passwd", "ftp://127.0.0.1/x"):
                with pytest.raises(InvalidSyscall, match="only fetches http and https") as err:
                    await fetch(url=bad)
                assert err.value.field == "arguments.url"
            with pytest.raises(ToolError, match="redirected more than 5 times"):
                await fetch(url=f"{url}/loop")
            with pytest.raises(ToolError, match="did not answer within 1 s"):
                await fetch(url=f"{url}/slow")
            with pytest.raises(InvalidSyscall, match="max_bytes"):
                await fetch(url=f"{url}/hello", max_bytes=0)
        release.set()


@pytest.mark.anyio
async def test_http_fetch_is_off_by_default():
    spec = http_fetch_tool(Settings().tools)
    assert spec.needs_network and spec.signature() == "(url: string, max_bytes: integer = 1048576)"
    with pytest.raises(PermissionDenied, match="http_fetch is off") as err:
        await spec.fn(url="http://127.0.0.1/")
    assert 'http_allow = ["example.com"]' in err.value.hint and "AIOS_TOOLS__HTTP_ALLOW" in err.value.hint
