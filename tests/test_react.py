"""The baselines: ReAct (one action per LLM call) and parallel function calling (several
tool calls per turn, run together), on the same tools and LLM interface as LLMCompiler."""
from __future__ import annotations

import json

import anyio
import pytest

from aios.agents.react import ReAct, ReactConfig
from aios.agents.react.parallel import ParallelFC, ParallelFCConfig, tool_call
from tests.scripted import Model, agent_kernel


@pytest.mark.anyio
async def test_react_thinks_acts_and_observes_until_it_answers(make_settings):
    model = Model(react=['Thought: first A\nAction: search("ab")',
                         'Thought: now B\nAction: search(query="abcd")\nObservation: made up by the model',
                         "Thought: done\nAction: Finish(ab is older)"])
    log: list[tuple[str, float, float]] = []
    async with agent_kernel(make_settings, model, log) as (k, os):
        with anyio.fail_after(60):
            out = await ReAct(os, now=k.clock.now).run("Who is older?")
    assert out.ok and out.answer == "ab is older" and out.num_rounds == 3
    assert [q for q, _, _ in log] == ["ab", "abcd"]
    last_prompt = model.prompts["react"][-1]
    assert "Observation: ab was born in 1902\nThought: now B\nAction: search(query=\"abcd\")\n" \
           "Observation: abcd was born in 1904" in last_prompt
    assert "made up by the model" not in last_prompt          # what the model invents after its action is cut
    kinds = [s.kind for s in out.trace.spans]
    assert kinds == ["llm", "tool", "llm", "tool", "llm"]   # strictly one after another
    spans = out.trace.spans
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:], strict=False))


@pytest.mark.anyio
async def test_react_reports_bad_actions_and_tool_errors_then_recovers(make_settings):
    model = Model(react=["I will just talk.", 'Thought: t\nAction: fly("home")', 'Thought: t\nAction: search("boom")',
                         "Thought: t\nAction: search(k='x', query='ab')", "Thought: t\nAction: Finish(ok)"])
    async with agent_kernel(make_settings, model) as (k, os):
        with anyio.fail_after(60):
            out = await ReAct(os, now=k.clock.now).run("q")
    assert out.ok and out.answer == "ok"
    prompt = model.prompts["react"][-1]
    assert "Observation: error: no `Action:` line" in prompt
    assert "Observation: error: unknown tool 'fly'" in prompt
    assert "RuntimeError: the index is down" in prompt
    assert "bad arguments for tool 'search': k: input should be a valid integer" in prompt
    assert len(out.trace.notes) == 4


@pytest.mark.anyio
async def test_react_gives_up_after_max_steps(make_settings):
    model = Model(react=['Thought: again\nAction: search("a")'] * 3)
    async with agent_kernel(make_settings, model) as (k, os):
        with anyio.fail_after(60):
            out = await ReAct(os, ReactConfig(max_steps=3), now=k.clock.now).run("q")
    assert not out.ok and out.error == "no answer within 3 steps"


@pytest.mark.anyio
async def test_parallel_fc_runs_a_turns_calls_together_and_loops(make_settings):
    first = [tool_call("c1", "search", {"query": "ab"}), tool_call("c2", "search", {"query": "abc"}),
             tool_call("c3", "calculator", {"expression": "2 * 3"})]
    second = [{"id": "c4", "type": "function", "function": {"name": "search", "arguments": "{not json"}},
              tool_call("c5", "search", {"query": "boom"})]
    model = Model(fc=[("", first), ("", second), "ab is older"])
    log: list[tuple[str, float, float]] = []
    async with agent_kernel(make_settings, model, log) as (k, os):
        with anyio.fail_after(60):
            out = await ParallelFC(os, now=k.clock.now).run("Who is older?")
    assert out.ok and out.answer == "ab is older" and out.num_rounds == 3
    starts = {q: s for q, s, _ in log}
    assert starts["ab"] == starts["abc"] == starts["2 * 3"]      # one turn's calls start together
    messages = model.prompts["fc"][1]
    assert messages[2]["tool_calls"][0]["function"]["name"] == "search"
    results = {m["tool_call_id"]: m["content"] for m in messages if m["role"] == "tool"}
    assert results == {"c1": "ab was born in 1902", "c2": "abc was born in 1903", "c3": "6.0"}
    last = {m["tool_call_id"]: m["content"] for m in model.prompts["fc"][2] if m["role"] == "tool"}
    assert last["c4"].startswith("error: the model's arguments for 'search' are not JSON")
    assert "RuntimeError: the index is down" in last["c5"]
    schemas = json.dumps(model.prompts["fc"][0])
    assert "Question: Who is older?" in schemas


@pytest.mark.anyio
async def test_parallel_fc_gives_up_after_max_turns(make_settings):
    model = Model(fc=[("", [tool_call("c", "search", {"query": "a"})])] * 2)
    async with agent_kernel(make_settings, model) as (k, os):
        with anyio.fail_after(60):
            out = await ParallelFC(os, ParallelFCConfig(max_turns=2), now=k.clock.now).run("q")
    assert not out.ok and out.error == "no answer within 2 turns"


@pytest.mark.anyio
async def test_baselines_run_as_kernel_processes(make_settings):
    model = Model(react=["Thought: t\nAction: Finish(42)"], fc=["43"])
    async with agent_kernel(make_settings, model) as (k, _):
        with anyio.fail_after(60):
            for name, expected in (("react", "42"), ("parallel-fc", "43")):
                proc = await k.spawn(name, program=name, task="q")
                done = await k.wait(proc.pid)
                assert done.exit_code == 0 and k.supervisor.log_path(proc.pid).read_text() == f"{expected}\n"
