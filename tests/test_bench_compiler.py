"""The compiler benchmark: its world and replay model are consistent (the replayed plans
parse into the gold programs, the answers follow from the results), and a small run
produces every figure the issue names, with the Gantt chart written."""
from __future__ import annotations

import json
import random

from aios.agents.compiler.plan import PlanParser
from aios.agents.compiler.prompts import JOINER_HEADER, PLANNER_HEADER, planner_user
from aios.benchmarks.bench_compiler import critical_path_bound, run
from aios.benchmarks.compiler_workloads import ReplayModel, dag_levels, make_questions, make_world, matches
from aios.agents.trace import Span
from aios.llm import Request

PARAMS = {"search": ["query"], "get_fact": ["entity", "fact"], "calculator": ["expression"]}


def test_replayed_plans_parse_into_the_gold_programs():
    world = make_world(random.Random(1))
    questions = make_questions(world, random.Random(2), 3)
    model = ReplayModel([q for qs in questions.values() for q in qs], seed=1)
    for name, qs in questions.items():
        for q in qs:
            reply = model.reply(Request("m", [{"role": "system", "content": PLANNER_HEADER},
                                              {"role": "user", "content": planner_user(q.text)}]))
            parser = PlanParser(PARAMS)
            tasks = [t for t in parser.feed("".join(reply.tokens)) + parser.finish() if not t.is_join]
            assert [(t.idx, t.tool) for t in tasks] == [(s.idx, s.tool) for s in q.rounds[0]], name
            assert all(t.error is None for t in tasks)
            assert parser.parsed.has_join
            assert matches(q.gold(), q.gold()) and q.gold() != ""
    movie = questions["movie"][0]
    assert len(movie.rounds[0]) == 8 and len(dag_levels(movie.rounds[0], set())) == 1
    assert any(len(dag_levels(q.rounds[0], set())) >= 2 for q in questions["parallelqa"])
    assert all(len(q.rounds) == 2 for q in questions["replan"])
    replan = questions["replan"][0]
    joiner = model.reply(Request("m", [{"role": "system", "content": JOINER_HEADER},
                                       {"role": "user", "content": f"Question: {replan.text}\n1. search(query='x')\n"
                                                                   "Observation: y\n2. search(query='z')\n"}]))
    assert "Action: Replan(" in "".join(joiner.tokens)


def test_matches_and_bound():
    assert matches("Yes.", "yes") and matches("1.2430", "1.243") and not matches("no", "yes")
    assert not matches(None, "x")
    spans = [Span("llm", "planner", 0.0, 2.0, round=0),
             Span("tool", "search", 0.6, 1.8, round=0, idx=1, released=0.5, run_s=1.0),
             Span("tool", "search", 1.0, 2.2, round=0, idx=2, released=1.0, deps=(1,), run_s=1.0),
             Span("llm", "joiner", 2.3, 3.3, round=0)]
    # action 1: 0.5 + 1 = 1.5; action 2 waits for it: 1.5 + 1 = 2.5; joiner 1.0
    assert critical_path_bound(spans) == 3.5


def test_small_run_reports_every_figure(tmp_path):
    chart = tmp_path / "gantt.png"
    result = run(quick=True, seed=3, show_progress=False, plot=str(chart), per_workload=1, speed=40.0)
    json.dumps(result)
    assert "replay model" in result["llm"] and "simulated" in result["llm"]
    assert set(result["workloads"]) == {"hotpotqa", "movie", "parallelqa", "replan"}
    for name, w in result["workloads"].items():
        for key in ("latency_speedup_vs_react", "latency_speedup_vs_parallel_fc", "tokens_ratio_vs_react",
                    "critical_path_ratio"):
            assert w[key] > 0, (name, key)
        assert w["accuracy"] == {"compiler": 1.0, "react": 1.0, "parallel_fc": 1.0}   # the replay is correct
        assert w["critical_path_ratio"] >= 0.999                  # the bound is a lower bound
    assert result["workloads"]["movie"]["latency_speedup_vs_react"] > 2      # 8 searches at once vs one by one
    assert result["workloads"]["replan"]["compiler_rounds_mean"] == 2
    assert result["plot"] == str(chart) and chart.stat().st_size > 10_000
