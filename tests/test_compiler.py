"""The LLMCompiler agent: the plan parser (including a stream cut at every byte), the task
fetching unit's order and concurrency, failure propagation, replanning, and each bad input
(syntax error, cycle, dangling reference, unknown tool, wrong argument types, a tool that
hangs or raises, no plan at all), against a real kernel with a scripted simulated model."""
from __future__ import annotations

import anyio
import pytest

from aios.agents.compiler import CompilerConfig, LLMCompiler
from aios.agents.compiler.plan import PlanParser, Ref, Template, parse_call, substitute
from aios.agents.compiler.prompts import parse_decision
from aios.agents.toolbox import Budget
from tests.scripted import Model, agent_kernel

PARAMS = {"search": ["query", "k"], "calculator": ["expression"], "lookup": ["entity", "field"]}

PLAN = """Thought: I need both birth years.
1. search("Luciano Pavarotti")
2. search(query="Andrea Bocelli", k=2)
Thought: now the difference.
3. calculator("$1 - ${2}")
4. lookup($3, field="x")
5. join()
<END_OF_PLAN>
this text after the plan is ignored
"""


# ---- the parser

def test_parse_plan_with_thoughts_refs_and_join():
    parser = PlanParser(PARAMS)
    tasks = parser.feed(PLAN) + parser.finish()
    assert [(t.idx, t.tool, t.deps) for t in tasks] == [
        (1, "search", ()), (2, "search", ()), (3, "calculator", (1, 2)), (4, "lookup", (3,)), (5, "join", (1, 2, 3, 4))]
    assert all(t.error is None for t in tasks)
    assert tasks[0].args == {"query": "Luciano Pavarotti"} and tasks[0].thought == "I need both birth years."
    assert tasks[1].args == {"query": "Andrea Bocelli", "k": 2}
    assert tasks[2].thought == "now the difference." and isinstance(tasks[2].args["expression"], Template)
    assert tasks[3].args == {"entity": Ref(3), "field": "x"}
    assert substitute(tasks[2].args["expression"], {1: 1935, 2: "1958"}) == "1935 - 1958"
    assert substitute(tasks[3].args["entity"], {3: [1, 2]}) == [1, 2]
    assert parser.parsed.has_join and parser.parsed.is_ended and parser.parsed.errors == []


def test_stream_cut_at_every_byte_gives_the_same_plan():
    whole = PlanParser(PARAMS)
    expected = [(t.idx, t.tool, t.args, t.deps, t.error) for t in whole.feed(PLAN) + whole.finish()]
    data = PLAN.encode()
    for cut in range(len(data) + 1):
        parser = PlanParser(PARAMS)
        got = parser.feed(data[:cut].decode(errors="ignore")) + parser.feed(data[cut:].decode(errors="ignore"))
        got += parser.finish()
        assert [(t.idx, t.tool, t.args, t.deps, t.error) for t in got] == expected, cut
    # and one byte at a time: each task comes out as soon as its line ends
    parser = PlanParser(PARAMS)
    seen_at = {}
    for i, ch in enumerate(PLAN):
        for t in parser.feed(ch):
            seen_at[t.idx] = i
    assert seen_at[1] == PLAN.index('")\n') + 2 and seen_at[1] < seen_at[2] < seen_at[3]


def test_unterminated_last_line_is_read_at_finish():
    parser = PlanParser(PARAMS)
    assert [t.idx for t in parser.feed('1. search("a")\n2. search("b")')] == [1]
    assert [t.idx for t in parser.finish()] == [2]


@pytest.mark.parametrize("line, words", [
    ('1. search("a"', "not a tool call"),
    ("1. search(query=)", "not valid"),
    ('1. fly("to the moon")', "unknown tool 'fly'"),
    ('1. search("a", 3, 4)', "takes 2 argument(s)"),
    ('1. search(query="a", query="b")', "given twice"),
    ("1. search(open('/etc/passwd'))", "is not a literal"),
    ("1. search(**x)", "not allowed"),
    ("1. join(3)", "no arguments"),
])
def test_a_bad_line_fails_alone_naming_its_line(line, words):
    parser = PlanParser(PARAMS)
    tasks = parser.feed(f'Thought: t\n{line}\n2. search("ok")\n') + parser.finish()
    bad, ok = tasks
    assert bad.error is not None and bad.error.startswith("line 2:") and words in bad.error, bad.error
    assert ok.error is None and ok.args == {"query": "ok"}


def test_cycles_and_dangling_references_fail_the_lines_involved():
    parser = PlanParser(PARAMS)
    tasks = parser.feed('1. search("$3")\n2. search("x")\n3. search($1)\n4. calculator("$2 + $9")\n'
                        '5. search($5)\n6. search($2)\n') + parser.finish()
    errors = {t.idx: t.error for t in tasks}
    assert "cycle" in errors[1] and "line 1 (action 1), line 3 (action 3)" in errors[1]
    assert "cycle" in errors[3] and errors[3].startswith("line 3:")
    assert errors[4] == "line 4: refers to $9, which no action of the plan defines"
    assert "cycle" in errors[5]                              # a line citing itself
    assert errors[2] is None and errors[6] is None           # untouched lines are fine


def test_numbering_must_increase_and_replans_continue_it():
    parser = PlanParser(PARAMS)
    tasks = parser.feed('2. search("a")\n1. search("b")\n2. search("c")\n3. search("d")\n') + parser.finish()
    assert [t.error is None for t in tasks] == [True, False, False, True]
    assert "numbers must increase" in tasks[1].error and "numbered like an earlier" in tasks[2].error
    replan = PlanParser(PARAMS, known={1, 2, 3})
    t = replan.feed('3. search("again")\n4. calculator("$3 * 2")\n') + replan.finish()
    assert "numbered like an earlier" in t[0].error and t[1].error is None and t[1].deps == (3,)


def test_prose_is_no_plan():
    parser = PlanParser(PARAMS)
    assert parser.feed("I think the answer is 42.\nIt is a fine number.") + parser.finish() == []
    assert len(parser.parsed.errors) == 2 and "not an action" in parser.parsed.errors[0]


def test_parse_call_and_decisions():
    assert parse_call('calculator(expression="1+1")', PARAMS) == ("calculator", {"expression": "1+1"}, ())
    assert parse_call("x.y-z(a=[1, -2.5, {'k': None}])") == ("x.y-z", {"a": [1, -2.5, {"k": None}]}, ())
    d = parse_decision("Thought: both found.\nAction: Finish(23 years (Pavarotti is older))")
    assert (d.action, d.text, d.thought) == ("finish", "23 years (Pavarotti is older)", "both found.")
    assert parse_decision("Thought: x\nAction: Replan(need Bocelli)").action == "replan"
    assert parse_decision("The answer is 23.") is None


# ---- the agent on a real kernel

FAN_OUT = "".join(f'{i}. search("entity {i}")\n' for i in range(1, 7)) + '7. calculator("1 + 1")\n8. join()\n'


@pytest.mark.anyio
async def test_streamed_plan_starts_tasks_early_and_runs_independent_ones_together(make_settings):
    model = Model([FAN_OUT], ["Thought: done\nAction: Finish(six entities)"])
    log: list[tuple[str, float, float]] = []
    async with agent_kernel(make_settings, model, log) as (k, os):
        with anyio.fail_after(60):
            agent = LLMCompiler(os, now=k.clock.now)
            out = await agent.run("Who are the six?")
    assert out.ok and out.answer == "six entities" and out.num_rounds == 1
    spans = out.trace.spans
    planner = next(s for s in spans if s.name == "planner")
    tools = [s for s in spans if s.kind == "tool"]
    assert len(tools) == 7 and all(s.error is None for s in tools)
    assert tools[0].start < planner.end                    # the first search began while the plan streamed
    starts = sorted(s.start for s in tools if s.name == "search")
    # each search starts within a token's time of its line: the six overlap
    assert all(b - a < 0.2 for a, b in zip(starts, starts[1:], strict=False))
    busy = max(s.end for s in tools) - min(s.start for s in tools)
    assert busy < 1.0 + 0.2 * 6 + 0.5                     # not 6 x 1.0 s one after another
    joiner = next(s for s in spans if s.name == "joiner")
    assert joiner.start >= max(s.end for s in tools)
    assert "Observation: entity 1 was born in 1908" in model.prompts["joiner"][0]


@pytest.mark.anyio
async def test_dependencies_order_tasks_and_results_flow_into_arguments(make_settings):
    plan = ('1. search("ab")\n2. search("abcd")\n'
            '3. calculator(expression="1902 - 1904")\n4. calculator("$3 * 10")\n5. join()\n')
    model = Model([plan], ["Thought: ok\nAction: Finish(-20)"])
    log: list[tuple[str, float, float]] = []
    async with agent_kernel(make_settings, model, log) as (k, os):
        with anyio.fail_after(60):
            out = await LLMCompiler(os, now=k.clock.now).run("q")
    assert out.ok
    times = {what: (start, end) for what, start, end in log}
    assert times["-2.0 * 10"][0] >= times["1902 - 1904"][1]      # $3 was done, and its result substituted
    by_idx = {s.idx: s for s in out.trace.spans if s.kind == "tool"}
    assert by_idx[4].deps == (3,) and by_idx[4].start >= by_idx[3].end
    assert by_idx[3].start < by_idx[1].end                       # independent of the searches


@pytest.mark.anyio
async def test_a_failure_reaches_its_dependents_only_and_the_joiner_sees_it(make_settings):
    plan = '1. search("boom")\n2. search("fine")\n3. calculator("$1 + 1")\n4. search("$2")\n5. join()\n'
    model = Model([plan], ["Thought: 1 failed\nAction: Finish(partial)"])
    log: list[tuple[str, float, float]] = []
    async with agent_kernel(make_settings, model, log) as (k, os):
        with anyio.fail_after(60):
            out = await LLMCompiler(os, now=k.clock.now).run("q")
    actions = {a["idx"]: a for a in out.extra["actions"]}
    assert "RuntimeError: the index is down" in actions[1]["error"]
    assert actions[3]["error"].startswith("not run: it needs $1, which failed")
    assert actions[2]["error"] is None and actions[4]["error"] is None
    assert [q for q, _, _ in log if q.startswith("fine was")] == ["fine was born in 1904"]
    prompt = model.prompts["joiner"][0]
    assert "Observation: error: tool_error: tool 'search' raised RuntimeError" in prompt
    assert "Observation: error: not run: it needs $1" in prompt
    assert out.answer == "partial"


@pytest.mark.anyio
async def test_replan_sees_results_so_far_and_continues_numbering(make_settings):
    model = Model(['1. search("ab")\n2. join()\n', '3. search("$1")\n4. join()\n'],
                  ["Thought: need the second one\nAction: Replan(search the result)",
                   "Thought: now complete\nAction: Finish(done)"])
    log: list[tuple[str, float, float]] = []
    async with agent_kernel(make_settings, model, log) as (k, os):
        with anyio.fail_after(60):
            out = await LLMCompiler(os, now=k.clock.now).run("q")
    assert out.ok and out.answer == "done" and out.num_rounds == 2
    replan_prompt = model.prompts["planner"][1]
    assert "1. search(query='ab')\nObservation: ab was born in 1902" in replan_prompt
    assert "need the second one" in replan_prompt and "Number new actions from 2" in replan_prompt
    assert [q for q, _, _ in log] == ["ab", "ab was born in 1902"]     # $1 from round 1, not re-run


@pytest.mark.anyio
@pytest.mark.parametrize("bad_plan, words", [
    ('1. search("a"\n2. join()\n', "line 1: not a tool call"),
    ('1. search($2)\n2. search($1)\n3. join()\n', "part of a cycle"),
    ('1. search($7)\n2. join()\n', "refers to $7, which no action of the plan defines"),
    ('1. teleport("home")\n2. join()\n', "unknown tool 'teleport'"),
    ('1. search(query=["not", "a", "string"], k="many")\n2. join()\n', "bad arguments for tool 'search'"),
    ('1. hang(5)\n2. join()\n', "did not finish within 0.5 s"),
    ('1. search("boom")\n2. join()\n', "RuntimeError: the index is down"),
])
async def test_bad_plans_are_errors_in_the_trace_and_are_replanned(make_settings, bad_plan, words):
    model = Model([bad_plan, '5. search("good")\n6. join()\n'],
                  ["Thought: action 1 failed\nAction: Replan(fix action 1)", "Thought: ok\nAction: Finish(fixed)"])
    async with agent_kernel(make_settings, model) as (k, os):
        with anyio.fail_after(60):
            out = await LLMCompiler(os, now=k.clock.now).run("q")
    assert out.ok and out.answer == "fixed" and out.num_rounds == 2
    first = next(a for a in out.extra["actions"] if a["idx"] == 1)
    assert first["error"] is not None and words in first["error"], first["error"]
    assert any(words in n for n in out.trace.notes)
    assert words in model.prompts["planner"][1]               # the replanning prompt carries the error


@pytest.mark.anyio
async def test_no_plan_at_all_replans_then_fails_cleanly(make_settings):
    model = Model(["I cannot make a plan.", "Still no plan, sorry."], [])
    async with agent_kernel(make_settings, model) as (k, os):
        with anyio.fail_after(60):
            out = await LLMCompiler(os, CompilerConfig(max_replans=1), now=k.clock.now).run("q")
    assert not out.ok and out.answer is None and out.num_rounds == 2
    assert out.error.startswith("the model returned no plan") and "not an action" in out.error
    assert "your reply had no plan" in model.prompts["planner"][1]


@pytest.mark.anyio
async def test_limits_on_replans_tasks_and_tokens(make_settings):
    always_replan = ["Thought: more\nAction: Replan(again)"] * 5
    model = Model(['1. search("a")\n', '2. search("b")\n', '3. search("c")\n'], always_replan)
    async with agent_kernel(make_settings, model) as (k, os):
        with anyio.fail_after(60):
            out = await LLMCompiler(os, CompilerConfig(max_replans=1), now=k.clock.now).run("q")
            assert not out.ok and "after 1 replan(s), the limit" in out.error
            wide = "".join(f'{i}. search("e{i}")\n' for i in range(1, 6))
            model.script["planner"].insert(0, wide)
            model.script["joiner"].insert(0, "Thought: x\nAction: Finish(some)")
            out = await LLMCompiler(os, CompilerConfig(max_tasks=3, max_replans=0), now=k.clock.now).run("q")
            errors = [a["error"] for a in out.extra["actions"]]
            assert errors[:3] == [None] * 3 and all("over the limit of 3 actions" in e for e in errors[3:])
            out = await LLMCompiler(os, CompilerConfig(budget=Budget(max_tokens=10)), now=k.clock.now).run("q")
            assert not out.ok and "token budget (10) is spent" in out.error


@pytest.mark.anyio
async def test_compiler_runs_as_a_kernel_process(make_settings):
    model = Model(['1. search("ab")\n2. join()\n'], ["Thought: found\nAction: Finish(born 1902)"])
    async with agent_kernel(make_settings, model) as (k, os):
        with anyio.fail_after(60):
            proc = await k.spawn("ask", program="compiler", task="When was ab born?")
            done = await k.wait(proc.pid)
            assert done.exit_code == 0 and k.supervisor.log_path(proc.pid).read_text() == "born 1902\n"
            # what it did, as it said it: the plan, the action and what it saw, the decision, the answer
            said = [(s.kind, s.text) for s in k.lifecycle.steps.since(proc.pid)]
            assert said == [("plan", "1. search(query='ab')"), ("action", "1. search(query='ab')"),
                            ("observation", "1. ab was born in 1902"), ("thought", "found"),
                            ("decision", "Finish(born 1902)"), ("answer", "born 1902")]
            model.script["planner"].append("no plan here")
            model.script["planner"].append("no plan here")
            model.script["planner"].append("no plan here")
            failed = await k.wait((await k.spawn("ask", program="compiler", task="q")).pid)
            # one line as its exit reason, nothing in its log; the traceback in its trace
            assert failed.exit_code == 1 and failed.exit_reason.startswith("failed: the model returned no plan")
            assert not k.supervisor.log_path(failed.pid).exists()
            last = k.lifecycle.steps.since(failed.pid)[-1]
            assert last.kind == "error" and "AgentFailed" in last.data["traceback"]


@pytest.mark.anyio
async def test_a_model_that_rambles_is_stopped_not_waited_for(make_settings):
    ramble = "word " * 3000   # 15 000 characters and no line break: no plan, and no point in reading on
    model = Model([ramble, ramble], [])
    async with agent_kernel(make_settings, model) as (k, os):
        with anyio.fail_after(60):
            out = await LLMCompiler(os, CompilerConfig(max_replans=1), now=k.clock.now).run("q")
        planner = [s for s in out.trace.spans if s.name == "planner"]
        # each call was cancelled after ~1000 characters, not generated to its end
        assert len(planner) == 2 and all(s.duration < 0.02 * 600 for s in planner)
        assert not out.ok and "over 1000 characters with no end" in out.error
        calls = [t.call for t in k.tickets.values()]
        assert calls == []                                  # nothing left running
