"""The compiler benchmark's world, questions and replay model.

The world is a small generated encyclopedia (people, films, countries; seeded), served by
three tools with latencies drawn from stated distributions (`TOOL_LATENCY`):
  search(query)            the best article for a query (BM25, or an exact title): text
  get_fact(entity, fact)   one fact of an entity, as a knowledge-graph query would give it
  calculator(expression)   arithmetic (aios's safe calculator)

Workloads shaped like the LLMCompiler paper's benchmarks:
  hotpotqa     two-entity comparisons: 2 independent searches
  movie        a film like four others, among four candidates: 8 independent searches
  parallelqa   arithmetic over facts, with dependencies (facts of facts, then math on them)
  replan       two titles that are ambiguous: the searches say so, and only after reading
               them can the next calls be written (one replan), two branches each round

With no API key the LLM is a **replay model**: for each question it replies what a correct
model would, in each agent's own format (planner, joiner, ReAct step, parallel function
calls), computed from the question's gold program. Planner and ReAct actions pass
arguments by position, as the paper's prompts and examples do (`search("...")`). Its thoughts have lengths drawn from
stated distributions (`THOUGHT_WORDS`); its text is streamed by the simulated
hardware-model backend in pieces of up to four characters (the 4-characters-a-token rule
the kernel uses for prompts), so the LLM time of each call follows from what was said."""
from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from aios.agents.compiler.plan import END_OF_PLAN, Ref, Template, show, substitute
from aios.agents.compiler.prompts import JOINER_HEADER, PLANNER_HEADER, observation
from aios.agents.react import REACT_HEADER
from aios.agents.react.parallel import FC_HEADER, tool_call
from aios.errors import InvalidSyscall, NotFound
from aios.llm import Request
from aios.llm.hardware import Reply
from aios.tools.calculator import calculator
from aios.tools.search import Corpus, Document

# ---- stated distributions (lognormal: median and sigma of the log)

TOOL_LATENCY = {
    "search": (0.60, 0.45),       # a Wikipedia-API-like page fetch, as ReAct and LLMCompiler use
    "get_fact": (0.40, 0.45),     # a knowledge-graph query over HTTP
    "calculator": (0.005, 0.30),  # local arithmetic
}
THOUGHT_WORDS = {
    "react": (16, 0.35),          # a ReAct step's thought
    "joiner": (14, 0.35),         # the joiner's thought before Finish/Replan
    "planner": (12, 0.35),        # the planner's thought on a replan
}
GENRES = ["drama", "comedy", "thriller", "western", "musical", "horror", "romance", "documentary"]
OCCUPATIONS = ["singer", "director", "actor", "writer", "composer"]
_SYLLABLES = ["ka", "lo", "mi", "ra", "ten", "vo", "sa", "del", "ri", "an", "mo", "ve", "lu", "ci", "or", "bel",
              "na", "tor", "es", "qui", "pa", "dan", "sel", "ho"]


def lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(rng.gauss(0.0, sigma))


# ---- the world

@dataclass
class World:
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)     # title -> facts
    articles: dict[str, str] = field(default_factory=dict)             # title -> text
    corpus: Corpus | None = None

    def add(self, title: str, facts: dict[str, Any], text: str) -> None:
        self.facts[title] = facts
        self.articles[title] = text

    def finish(self) -> None:
        self.corpus = Corpus.from_documents([Document(t, f"{t}. {a}", "world") for t, a in self.articles.items()],
                                            name="benchmark encyclopedia")

    def search(self, query: str) -> str:
        """The article titled `query`, else the best BM25 match."""
        assert self.corpus is not None
        doc = self.corpus.lookup(query)
        if doc is None:
            hits = self.corpus.search(query, 1)
            if not hits:
                return f"No article matches {query!r}."
            doc = hits[0][0]
        return doc.text

    def get_fact(self, entity: str, fact: str) -> Any:
        facts = self.facts.get(entity)
        if facts is None:
            assert self.corpus is not None
            raise NotFound(f"no entity {entity!r}", field="entity",
                           hint=f"close titles: {', '.join(self.corpus.close_titles(entity)) or 'none'}")
        if fact not in facts:
            raise InvalidSyscall(f"{entity!r} has no fact {fact!r}", field="fact",
                                 hint=f"facts: {', '.join(sorted(facts))}")
        return facts[fact]


def _name(rng: random.Random, used: set[str], parts: int) -> str:
    while True:
        words = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize() for _ in range(parts)]
        name = " ".join(words)
        if name not in used:
            used.add(name)
            return name


def make_world(rng: random.Random, *, num_countries: int = 12, num_people: int = 60, num_films: int = 80) -> World:
    w = World()
    used: set[str] = set()
    countries = []
    for _ in range(num_countries):
        name = _name(rng, used, 1)
        pop, area = rng.randint(2, 140), rng.randint(20, 900)
        countries.append(name)
        w.add(name, {"population": pop, "area": area},
              f"{name} is a country with a population of {pop} million and an area of {area} thousand square km.")
    people = []
    for _ in range(num_people):
        name = _name(rng, used, 2)
        born, country, job = rng.randint(1900, 1995), rng.choice(countries), rng.choice(OCCUPATIONS)
        people.append(name)
        w.add(name, {"born": born, "born_in": country, "occupation": job},
              f"{name} (born {born} in {country}) is a {job} from {country}.")
    for _ in range(num_films):
        title = _name(rng, used, rng.randint(1, 2))
        _film(w, rng, title, title, people)
    w.finish()
    return w


def _film(w: World, rng: random.Random, title: str, shown: str, people: list[str]) -> None:
    year, genres = rng.randint(1950, 2022), sorted(rng.sample(GENRES, 2))
    director, lead = rng.sample(people, 2)
    w.add(title, {"year": year, "genres": genres, "director": director, "lead": lead},
          f"{shown} is a {year} {genres[0]} and {genres[1]} film directed by {director}, starring {lead}.")


# ---- questions: a gold program per round, and the answer

@dataclass(frozen=True)
class Step:
    idx: int
    tool: str
    args: dict[str, Any]        # with Ref / Template where the plan cites an earlier result


@dataclass
class Question:
    workload: str
    text: str
    rounds: list[list[Step]]
    answer: Callable[[dict[int, Any]], str]     # from the results, the correct answer
    replan_reason: str = ""
    results: dict[int, Any] = field(default_factory=dict)     # filled by `solve`

    @property
    def steps(self) -> list[Step]:
        return [s for r in self.rounds for s in r]

    def gold(self) -> str:
        return self.answer(self.results)


def run_tool(world: World, tool: str, args: dict[str, Any]) -> Any:
    if tool == "search":
        return world.search(args["query"])
    if tool == "get_fact":
        return world.get_fact(args["entity"], args["fact"])
    if tool == "calculator":
        return calculator(args["expression"])
    raise NotFound(f"unknown tool {tool!r}")


def solve(world: World, q: Question) -> Question:
    """Runs the gold program without latency: every result, for the replay and the answer."""
    for step in q.steps:
        args = {k: substitute(v, q.results) for k, v in step.args.items()}
        q.results[step.idx] = run_tool(world, step.tool, args)
    return q


def hotpotqa(world: World, rng: random.Random) -> Question:
    people = [t for t, f in world.facts.items() if "born" in f and "year" not in f]
    while True:
        a, b = rng.sample(people, 2)
        if world.facts[a]["born"] != world.facts[b]["born"]:
            break
    steps = [Step(1, "search", {"query": a}), Step(2, "search", {"query": b})]
    if rng.random() < 0.5:
        def first(r: dict[int, Any], a: str = a, b: str = b) -> str:
            return a if world.facts[a]["born"] < world.facts[b]["born"] else b
        return Question("hotpotqa", f"Who was born first, {a} or {b}?", [steps], first)

    def same(r: dict[int, Any], a: str = a, b: str = b) -> str:
        return "yes" if world.facts[a]["born_in"] == world.facts[b]["born_in"] else "no"
    return Question("hotpotqa", f"Were {a} and {b} born in the same country?", [steps], same)


def movie(world: World, rng: random.Random) -> Question:
    films = [t for t, f in world.facts.items() if "genres" in f]
    while True:
        liked = rng.sample(films, 4)
        options = rng.sample([f for f in films if f not in liked], 4)
        liked_genres = [g for f in liked for g in world.facts[f]["genres"]]
        scores = [sum(liked_genres.count(g) for g in world.facts[o]["genres"]) for o in options]
        if scores.count(max(scores)) == 1:
            break
    steps = [Step(i + 1, "search", {"query": t}) for i, t in enumerate(liked + options)]
    best = options[scores.index(max(scores))]
    text = (f"Which film is most similar to {', '.join(liked[:3])} and {liked[3]}: "
            f"{', '.join(options[:3])} or {options[3]}?")
    return Question("movie", text, [steps], lambda r, best=best: best)


def parallelqa(world: World, rng: random.Random) -> Question:
    people = [t for t, f in world.facts.items() if "born_in" in f]
    countries = [t for t, f in world.facts.items() if "population" in f]
    films = [t for t, f in world.facts.items() if "genres" in f]
    if rng.random() < 0.5:
        p1, p2 = rng.sample(people, 2)
        c = rng.choice(countries)
        steps = [Step(1, "get_fact", {"entity": p1, "fact": "born_in"}),
                 Step(2, "get_fact", {"entity": p2, "fact": "born_in"}),
                 Step(3, "get_fact", {"entity": Ref(1), "fact": "population"}),
                 Step(4, "get_fact", {"entity": Ref(2), "fact": "population"}),
                 Step(5, "get_fact", {"entity": c, "fact": "area"}),
                 Step(6, "calculator", {"expression": Template("(__aios_ref_3__ + __aios_ref_4__) / __aios_ref_5__")})]
        text = (f"What is the combined population (in millions) of the countries where {p1} and {p2} were born, "
                f"divided by the area of {c} (in thousand square km)?")
        return Question("parallelqa", text, [steps], lambda r: f"{r[6]:.4g}")
    p, f, c = rng.choice(people), rng.choice(films), rng.choice(countries)
    steps = [Step(1, "get_fact", {"entity": p, "fact": "born"}),
             Step(2, "get_fact", {"entity": f, "fact": "year"}),
             Step(3, "get_fact", {"entity": f, "fact": "director"}),
             Step(4, "get_fact", {"entity": Ref(3), "fact": "born"}),
             Step(5, "get_fact", {"entity": c, "fact": "population"}),
             Step(6, "calculator", {"expression": Template("(__aios_ref_2__ - __aios_ref_1__) * __aios_ref_5__")}),
             Step(7, "calculator", {"expression": Template("__aios_ref_6__ + __aios_ref_4__")})]
    text = (f"Take the years between {p}'s birth and the release of {f}, multiply by the population of {c} "
            f"in millions, and add the birth year of the director of {f}. What number do you get?")
    return Question("parallelqa", text, [steps], lambda r: f"{r[7]:.4g}")


def replan(world: World, rng: random.Random) -> Question:
    """Two titles, each shared by a film and a novel: the searches find disambiguation
    pages, and the films' page titles in them are what the next calls need, so the plan
    cannot be written in one go (one replan). Both branches run in parallel each round."""
    films = [_ambiguous(world, rng) for _ in range(2)]
    while world.facts[world.facts[films[0][1]]["director"]]["born"] == \
            world.facts[world.facts[films[1][1]]["director"]]["born"]:
        films[1] = _ambiguous(world, rng)
    world.finish()
    (a, film_a), (b, film_b) = films
    rounds = [[Step(1, "search", {"query": a}), Step(2, "search", {"query": b})],
              [Step(3, "get_fact", {"entity": film_a, "fact": "director"}),
               Step(4, "get_fact", {"entity": film_b, "fact": "director"}),
               Step(5, "get_fact", {"entity": Ref(3), "fact": "born"}),
               Step(6, "get_fact", {"entity": Ref(4), "fact": "born"})]]

    def older(r: dict[int, Any]) -> str:
        return a if r[5] < r[6] else b
    return Question("replan", f"Whose director was born first: the film {a} or the film {b}?", rounds, older,
                    replan_reason=f"both titles are ambiguous; the films are {film_a} and {film_b}")


def _ambiguous(world: World, rng: random.Random) -> tuple[str, str]:
    """A title with a disambiguation page, a film and a novel; -> (title, the film's page)."""
    people = [t for t, f in world.facts.items() if "born_in" in f]
    title = _name(rng, set(world.facts), 1)
    year = rng.randint(1950, 2022)
    film_title = f"{title} ({year} film)"
    _film(world, rng, film_title, title, people)
    world.facts[film_title]["year"] = year
    author = rng.choice(people)
    world.add(f"{title} (novel)", {"author": author}, f"{title} is a novel by {author}.")
    world.add(title, {"refers_to": [film_title, f"{title} (novel)"]},
              f"{title} may refer to: {film_title}, a film; {title} (novel), a novel by {author}.")
    return title, film_title


WORKLOADS: dict[str, Callable[[World, random.Random], Question]] = {
    "hotpotqa": hotpotqa, "movie": movie, "parallelqa": parallelqa, "replan": replan}
PAPER_SPEEDUP_VS_REACT = {"hotpotqa": 1.80, "movie": 3.74, "parallelqa": 2.15}
HAS_DEPENDENCIES = {"hotpotqa": False, "movie": False, "parallelqa": True, "replan": True}


def make_questions(world: World, rng: random.Random, per_workload: int) -> dict[str, list[Question]]:
    out: dict[str, list[Question]] = {}
    for name, make in WORKLOADS.items():
        qs = [make(world, rng) for _ in range(per_workload)]
        out[name] = [solve(world, q) for q in qs]
    return out


def matches(answer: str | None, gold: str) -> bool:
    """The answer is right: equal ignoring case and punctuation, or the same number."""
    if answer is None:
        return False
    norm = lambda s: re.sub(r"[^a-z0-9. ]", "", s.lower()).strip(" .")   # noqa: E731
    if norm(answer) == norm(gold):
        return True
    try:
        return math.isclose(float(answer.strip()), float(gold), rel_tol=1e-3)
    except ValueError:
        return False


def dag_levels(steps: Sequence[Step], known: set[int]) -> list[list[Step]]:
    """The steps by depth in their dependency graph (what parallel function calling can
    issue together, one turn per level)."""
    g = nx.DiGraph()
    for s in steps:
        g.add_node(s.idx)
        for d in _deps(s):
            if d not in known:
                g.add_edge(d, s.idx)
    by_idx = {s.idx: s for s in steps}
    return [[by_idx[i] for i in sorted(gen)] for gen in nx.topological_generations(g)]


def _deps(step: Step) -> set[int]:
    """The actions a step cites ($k in its arguments, as the plan shows them)."""
    return {int(k) for k in re.findall(r"\$(\d+)", " ".join(show_args(step.args).values()))}


def show_args(args: dict[str, Any]) -> dict[str, str]:
    return {k: show(v) for k, v in args.items()}


# ---- the replay model

class ReplayModel:
    """What a correct model would say, for every prompt of the three agents; a responder
    for the hardware-model backend (`HardwareBackend(settings, clock, ReplayModel(...))`)."""

    def __init__(self, questions: Sequence[Question], seed: int):
        self.by_text = {q.text: q for q in questions}
        self.seed = seed
        self.num_replies = 0

    def reply(self, request: Request) -> Reply:
        self.num_replies += 1
        system = str(request.messages[0].get("content") or "")
        user = next(str(m.get("content")) for m in request.messages if m.get("role") == "user")
        q = self.by_text.get(_question(user))
        if q is None:
            return _reply("Thought: I do not know this question.\nAction: Finish(unknown)")
        rng = random.Random(f"{self.seed}:{q.text}:{system[:20]}:{len(request.messages)}:{len(user)}")
        if system.startswith(PLANNER_HEADER):
            return _reply(self._plan(q, user, rng))
        if system.startswith(JOINER_HEADER):
            return _reply(self._join(q, user, rng))
        if system.startswith(REACT_HEADER):
            return _reply(self._react(q, user, rng))
        if system.startswith(FC_HEADER):
            return self._fc(q, request.messages)
        return _reply("I cannot help with that.")

    def _round_of(self, q: Question, history: str) -> int:
        """How many of the gold program's rounds the history already holds."""
        done = {int(i) for i in re.findall(r"^(\d+)\. ", history, re.M)}
        return sum(1 for r in q.rounds if all(s.idx in done for s in r))

    def _plan(self, q: Question, user: str, rng: random.Random) -> str:
        rnd = self._round_of(q, user.split("Previous plan and results:", 1)[1]) if "Previous plan" in user else 0
        rnd = min(rnd, len(q.rounds) - 1)
        lines = []
        if rnd > 0:
            lines.append("Thought: " + thought(rng, "planner", f"{q.replan_reason}, so I look it up",
                                               observation(q.results[q.rounds[rnd - 1][-1].idx])))
        for s in q.rounds[rnd]:
            lines.append(f"{s.idx}. {s.tool}({', '.join(show_args(s.args).values())})")   # positional, as the paper's
        lines.append(f"{q.rounds[rnd][-1].idx + 1}. join(){END_OF_PLAN}")
        return "\n".join(lines)

    def _join(self, q: Question, user: str, rng: random.Random) -> str:
        rnd = self._round_of(q, user)
        last = q.steps[-1].idx
        if rnd < len(q.rounds):
            return (f"Thought: {thought(rng, 'joiner', q.replan_reason or 'some results are missing', '')}\n"
                    f"Action: Replan({q.replan_reason or 'the missing results'})")
        return (f"Thought: {thought(rng, 'joiner', 'the results answer the question', observation(q.results[last]))}\n"
                f"Action: Finish({q.gold()})")

    def _react(self, q: Question, user: str, rng: random.Random) -> str:
        step = user.count("Observation:")
        steps = q.steps
        if step >= len(steps):
            return (f"Thought: {thought(rng, 'react', 'I have what I need', observation(q.results[steps[-1].idx]))}\n"
                    f"Action: Finish({q.gold()})")
        s = steps[step]
        args = {k: substitute(v, q.results) for k, v in s.args.items()}
        before = observation(q.results[steps[step - 1].idx]) if step else q.text
        return (f"Thought: {thought(rng, 'react', f'I need {s.tool} for {_brief(args)}', before)}\n"
                f"Action: {s.tool}({', '.join(repr(v) for v in args.values())})")

    def _fc(self, q: Question, messages: list[dict[str, Any]]) -> Reply:
        turn = sum(1 for m in messages if m.get("role") == "assistant" and m.get("tool_calls"))
        levels = [lvl for r_i, r in enumerate(q.rounds)
                  for lvl in dag_levels(r, {s.idx for prev in q.rounds[:r_i] for s in prev})]
        if turn >= len(levels):
            return _reply(q.gold())
        calls = [tool_call(f"call_{s.idx}", s.tool, {k: substitute(v, q.results) for k, v in s.args.items()})
                 for s in levels[turn]]
        # the model generates the calls' JSON: its tokens are that text, not shown as content
        spoken = json.dumps([c["function"] for c in calls])
        return Reply(tuple(_PIECE.findall(spoken)), calls)


_PIECE = re.compile(r"\s*\S{1,4}|\s+")
_FILLER = ("so then which means and the result here now next also check that it is given known still".split())


def _reply(text: str) -> Reply:
    return Reply(tuple(_PIECE.findall(text)))


def _question(user: str) -> str:
    m = re.search(r"^Question: (.*)$", user, re.M)
    return m.group(1).strip() if m else ""


def _brief(args: dict[str, Any]) -> str:
    return ", ".join(str(v) for v in args.values())[:60]


def thought(rng: random.Random, role: str, lead: str, context: str) -> str:
    """A thought of the stated length: its lead, then words of what the model just read."""
    median, sigma = THOUGHT_WORDS[role]
    n = max(4, round(lognormal(rng, median, sigma)))
    words = lead.split()
    pool = re.findall(r"[A-Za-z0-9']+", context) or _FILLER
    while len(words) < n:
        words.append(pool[len(words) % len(pool)] if rng.random() < 0.7 else rng.choice(_FILLER))
    return " ".join(words[:max(n, len(lead.split()))]).rstrip(".") + "."
