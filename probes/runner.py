"""Run probes against a llama-server: build prompts, send items concurrently, score, aggregate.

Request modes (docs/probes.md, "Request modes"):
  generate  greedy decoding; chat models via /v1/chat/completions (the GGUF's chat template),
            base models via /completion with the probe's few-shot prompt.
  logprob   one forward pass per query (/completion, n_predict 1, n_probs K); the score is read
            from the next-token distribution.
A request that fails or times out makes the item an error (score None, excluded from the mean),
never a score of 0.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from .client import LlamaClient, RequestError
from .extract import strip_thinking
from .loader import Item, Probe, ProbeError, SuiteEntry, get_probe, parse_suite
from .scorers import LogprobQuery, get_scorer

log = logging.getLogger(__name__)

__all__ = [
    "ItemResult",
    "ProbeResult",
    "aggregate",
    "ProbeJob",
    "allocate_streams",
    "item_costs",
    "measured_costs",
    "next_probe",
    "run_jobs",
    "run_probe",
    "run_suite",
    "paired_delta",
    "completion_prompt",
    "chat_messages",
    "resolve_mode",
    "has_chat_template",
    "logprob_prompts",
    "logprob_base",
    "answer_text",
    "RESPONSE_CHARS",
]

RESPONSE_CHARS = 300
# One token that each candidate kind starts with, to ask the tokenizer whether " X" is one token.
_KIND_SAMPLE = {"letters": "A", "yesno": "yes", "digits": "7"}


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class ItemResult:
    """One item's outcome. `score` is None exactly when `error` is set (the request failed).

    `truncated` is True when a thinking model ran out of max_tokens inside its thinking: the item
    keeps the score its visible answer earns (usually 0) and is counted in n_truncated, so a
    too-small budget is visible instead of silently looking like a wrong answer.
    """

    id: str
    score: float | None
    response: str = ""
    extracted: Any = None
    tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None
    coverage: float | None = None
    truncated: bool = False
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.coverage is None:
            d.pop("coverage")
        return d


@dataclass
class ProbeResult:
    """One probe's aggregate. `n` counts scored items; `n_errors` failed requests (excluded)."""

    name: str
    score: float | None
    stderr: float | None
    n: int
    n_errors: int
    version: int
    hash: str
    split: str
    mode: str
    chat: bool
    metrics: dict[str, float] = field(default_factory=dict)
    n_truncated: int = 0
    elapsed_s: float = 0.0
    items: list[ItemResult] = field(default_factory=list)

    def to_dict(self, items: bool = True) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "items"}
        if items:
            d["items"] = [it.to_dict() for it in self.items]
        return d


def _mean_stderr(xs: Sequence[float]) -> tuple[float | None, float | None]:
    n = len(xs)
    if n == 0:
        return None, None
    m = sum(xs) / n
    if n < 2:
        return m, None
    var = sum((x - m) ** 2 for x in xs) / (n - 1)
    return m, math.sqrt(var / n)


def aggregate(probe: Probe, split: str, mode: str, chat: bool, items: list[ItemResult],
              elapsed: float = 0.0) -> ProbeResult:
    """Aggregate item results into a ProbeResult: mean and stderr over non-error items, metric
    means, coverage mean (logprob mode), error and truncation counts. Public so that results
    merged from several runs (or re-read from JSONL) are aggregated exactly like a single run."""
    ok = [r for r in items if r.error is None]
    score, stderr = _mean_stderr([r.score for r in ok])  # type: ignore[misc]
    metrics: dict[str, float] = {}
    keys = sorted({k for r in ok for k in r.metrics})
    for k in keys:
        vals = [r.metrics[k] for r in ok if k in r.metrics]
        metrics[k] = sum(vals) / len(vals)
    cov = [r.coverage for r in ok if r.coverage is not None]
    if cov:
        metrics["coverage"] = sum(cov) / len(cov)
    return ProbeResult(
        name=probe.name, score=score, stderr=stderr, n=len(ok), n_errors=len(items) - len(ok),
        version=probe.version, hash=probe.hash, split=split, mode=mode, chat=chat,
        metrics=metrics, n_truncated=sum(r.truncated for r in ok), elapsed_s=round(elapsed, 3),
        items=items,
    )


_aggregate = aggregate  # old private name, kept for callers that used it


def _item_id(x: Any) -> str:
    return x.id if hasattr(x, "id") else x["id"]


def _item_score(x: Any) -> float | None:
    return x.score if hasattr(x, "score") else x.get("score")


def paired_delta(result_a_items: Any, result_b_items: Any) -> tuple[float | None, float | None]:
    """Mean of (score_b - score_a) over items both runs scored, and its paired standard error
    (sample std of the per-item differences / sqrt(n)).

    Accepts ProbeResults, lists of ItemResult, or lists of item dicts (from the items JSONL).
    Call as paired_delta(baseline, candidate) to get candidate - baseline. Returns (None, None)
    when no item was scored by both; stderr is None below 2 paired items.
    """
    a = getattr(result_a_items, "items", result_a_items)
    b = getattr(result_b_items, "items", result_b_items)
    sa = {_item_id(x): _item_score(x) for x in a}
    diffs = []
    for x in b:
        i, s = _item_id(x), _item_score(x)
        if s is not None and sa.get(i) is not None:
            diffs.append(s - sa[i])
    return _mean_stderr(diffs)


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------


def _item_text(item: Item) -> str:
    """The item's question text; chat-only items are flattened (their contents joined)."""
    if item.prompt is not None:
        return item.prompt
    return "\n\n".join(m["content"] for m in item.messages or [] if m["role"] != "assistant")


def completion_prompt(probe: Probe, item: Item) -> str:
    """Few-shot prompt for base models (/completion). Ends with the answer prefix, e.g.:

    {instruction}\\n\\n
    Question: {shot prompt}\\nAnswer: {shot answer}\\n\\n   (per few-shot example)
    Question: {item prompt}\\nAnswer:
    """
    s = probe.settings
    parts = []
    if s.instruction.strip():
        parts.append(s.instruction.strip() + "\n\n")
    for shot in s.fewshot:
        parts.append(f"{s.question_prefix} {shot['prompt']}\n{s.answer_prefix} {shot['answer']}\n\n")
    parts.append(f"{s.question_prefix} {_item_text(item)}\n{s.answer_prefix}")
    return "".join(parts)


def chat_messages(probe: Probe, item: Item) -> list[dict]:
    """Chat turns: few-shot examples as earlier user/assistant turns, the instruction as a
    preamble of the first user turn (not a system message: some templates reject one)."""
    s = probe.settings
    if item.messages is not None:
        msgs = [dict(m) for m in item.messages]
    else:
        msgs = []
        for shot in s.fewshot:
            msgs.append({"role": "user", "content": shot["prompt"]})
            msgs.append({"role": "assistant", "content": shot["answer"]})
        msgs.append({"role": "user", "content": item.prompt or ""})
    if s.instruction.strip():
        for m in msgs:
            if m["role"] == "user":
                m["content"] = s.instruction.strip() + "\n\n" + m["content"]
                break
    return msgs


def _stops(probe: Probe) -> list[str]:
    """The probe's stop strings plus the next few-shot question, which never belongs to an
    answer."""
    stops = list(probe.settings.stop)
    q = "\n" + probe.settings.question_prefix
    if q.strip() and q not in stops:
        stops.append(q)
    return stops


# --------------------------------------------------------------------------------------------
# Running one item
# --------------------------------------------------------------------------------------------


def _template_kwargs(no_think: bool) -> dict | None:
    return {"enable_thinking": False} if no_think else None


def _run_generate(client: LlamaClient, probe: Probe, item: Item, chat: bool,
                  no_think: bool) -> ItemResult:
    scorer = get_scorer(probe.scorer)
    t0 = time.perf_counter()
    try:
        if chat:
            reply = client.chat(chat_messages(probe, item), max_tokens=probe.settings.max_tokens,
                                template_kwargs=_template_kwargs(no_think))
        else:
            reply = client.complete(completion_prompt(probe, item),
                                    max_tokens=probe.settings.max_tokens, stop=_stops(probe))
    except RequestError as exc:
        return ItemResult(item.id, None, error=str(exc),
                          latency_s=round(time.perf_counter() - t0, 4))
    latency = time.perf_counter() - t0
    visible = strip_thinking(reply.content)
    truncated = reply.finish == "length" and (
        visible.unclosed or (not visible.text and bool(reply.reasoning.strip()))
    )
    scored = scorer.score_text(item, visible.text)
    return ItemResult(
        id=item.id, score=scored.score, response=visible.text[:RESPONSE_CHARS],
        extracted=scored.extracted, tokens=reply.tokens, latency_s=round(latency, 4),
        truncated=truncated, metrics=scored.metrics,
    )


def _logprob_prompt(client: LlamaClient, probe: Probe, item: Item, q: LogprobQuery, base: str) -> str:
    p = base + (" " + q.suffix if q.suffix else "")
    if not client.space_joins(_KIND_SAMPLE[q.kind]):
        p += " "
    return p


def logprob_prompts(client: LlamaClient, probe: Probe, item: Item, chat: bool = False,
                    no_think: bool = False) -> list[tuple[LogprobQuery, str]]:
    """Each logprob query of an item with the prompt logprob mode sends for it (the next token
    is the answer): the one place these prompts are built, for the runner and for rys-neuro's
    logit lens. Raises RequestError (the chat template and the space check ask the server)."""
    base = logprob_base(client, probe, item, chat, no_think)
    return [(q, _logprob_prompt(client, probe, item, q, base))
            for q in get_scorer(probe.scorer).logprob_queries(item)]


def logprob_base(client: LlamaClient, probe: Probe, item: Item, chat: bool = False,
                 no_think: bool = False) -> str:
    """The prompt of an item up to its answer prefix (``...Answer:``; chat models: the chat
    template applied, then the prefix): what every logprob query of the item extends."""
    if chat:
        return client.apply_template(chat_messages(probe, item), _template_kwargs(no_think)) \
            + probe.settings.answer_prefix
    return completion_prompt(probe, item)


def answer_text(client: LlamaClient, query: LogprobQuery, answer: str) -> str:
    """The reference answer as the next token after a logprob prompt: with its leading space
    when the prompt ends at "Answer:" (the space joins the answer token), bare otherwise."""
    return (" " if client.space_joins(_KIND_SAMPLE[query.kind]) else "") + answer


def _expand_ten(client: LlamaClient, prompt: str, dist: dict[str, float],
                n_probs: int) -> tuple[dict[str, float], int]:
    """Split the mass of a "1" token into ratings 1 and 10 on digit-splitting tokenizers.

    When the vocabulary has no "10" token, "10" is generated as "1" then "0": ask for the next
    token after "1" and move p("1") * p("0" | "1") onto a synthetic "10" entry. Returns the
    distribution and the number of extra requests made (0 or 1).
    """
    if any(t.strip() == "10" for t in dist):
        return dist, 0  # the tokenizer has a "10" token: nothing to split
    ones = [t for t in dist if t.strip() == "1"]
    if sum(dist[t] for t in ones) < 0.005:
        return dist, 0  # no real mass to split: save the request
    tok = max(ones, key=lambda t: dist[t])
    follow = client.next_token_probs(prompt + tok, n_probs)  # exactly what generation would see
    p0 = sum(p for t, p in follow.items() if t.strip() == "0")
    out = dict(dist)
    p1 = sum(dist[t] for t in ones)
    for t in ones:
        del out[t]
    out["1"] = p1 * (1.0 - p0)
    out["10"] = p1 * p0
    return out, 1


def _fmt_top(dist: dict[str, float], k: int = 5) -> str:
    top = sorted(dist.items(), key=lambda kv: -kv[1])[:k]
    return ", ".join(f"{t!r}:{p:.3f}" for t, p in top)


def _run_logprob(client: LlamaClient, probe: Probe, item: Item, chat: bool,
                 no_think: bool) -> ItemResult:
    scorer = get_scorer(probe.scorer)
    t0 = time.perf_counter()
    queries = scorer.logprob_queries(item)
    dists = []
    n_requests = len(queries)
    try:
        for q, prompt in logprob_prompts(client, probe, item, chat, no_think):
            dist = client.next_token_probs(prompt, probe.settings.n_probs)
            if q.expand_ten:
                dist, extra = _expand_ten(client, prompt, dist, probe.settings.n_probs)
                n_requests += extra
            dists.append(dist)
    except RequestError as exc:
        return ItemResult(item.id, None, error=str(exc),
                          latency_s=round(time.perf_counter() - t0, 4))
    latency = time.perf_counter() - t0
    scored = scorer.score_logprobs(item, dists)
    response = " | ".join(
        (f"{q.label}: " if q.label else "") + _fmt_top(d) for q, d in zip(queries, dists)
    )
    return ItemResult(
        id=item.id, score=scored.score, response=response[:RESPONSE_CHARS],
        extracted=scored.extracted, tokens=n_requests, latency_s=round(latency, 4),
        coverage=None if scored.coverage is None else round(scored.coverage, 6),
        metrics=scored.metrics,
    )


# --------------------------------------------------------------------------------------------
# Running probes
# --------------------------------------------------------------------------------------------


def resolve_mode(probe: Probe, mode: str) -> str:
    """"auto" -> the probe's first listed mode; a mode the probe lacks falls back to the one it
    has (instruction probes run generate even in a logprob sweep), with a warning."""
    if mode == "auto":
        return probe.modes[0]
    if mode not in ("generate", "logprob"):
        raise ProbeError(f"unknown mode {mode!r} (use auto, generate or logprob)")
    if mode not in probe.modes:
        log.warning("probe %s does not support %s mode; using %s", probe.name, mode, probe.modes[0])
        return probe.modes[0]
    return mode


def has_chat_template(gguf_path: str | os.PathLike) -> bool:
    """Whether a GGUF carries a chat template (decides chat vs completion requests).

    Reads it through gguf_surgery.SourceModel, imported lazily so probes do not need it.
    """
    from rys import gguf_surgery  # noqa: PLC0415  (lazy on purpose)

    return bool(gguf_surgery.SourceModel.open(gguf_path).has_chat_template)


@dataclass(frozen=True)
class ProbeJob:
    """One probe's part of a run: the items to send, the split they are scored as, the mode."""

    probe: Probe
    items: tuple[Item, ...]
    split: str = "dev"
    mode: str = "generate"

    @classmethod
    def select(cls, probe: Probe | str, *, split: str = "dev", n: int | None = None,
               offset: int = 0, item_ids: Iterable[str] | None = None,
               mode: str = "auto") -> ProbeJob:
        p = get_probe(probe) if isinstance(probe, str) else probe
        return cls(p, tuple(p.select(split, n=n, offset=offset, item_ids=item_ids)), split,
                   resolve_mode(p, mode))


def item_costs(jobs: Mapping[str, ProbeJob],
               measured: Mapping[str, float] | None = None) -> dict[str, float]:
    """Relative cost of one item of each probe: `measured` (e.g. mean item latency in the
    previous config of a sweep) where given and positive, else the probe's generation budget
    (max_tokens), since decoding is what a batch of slots shares and what dominates on a GPU."""
    out = {}
    for name, job in jobs.items():
        m = (measured or {}).get(name)
        out[name] = float(m) if m and m > 0 else float(max(1, job.probe.settings.max_tokens))
    return out


def measured_costs(results: Mapping[str, ProbeResult]) -> dict[str, float]:
    """Mean latency of the answered items of each probe: the `costs` for the next run of the
    same probes (a sweep's next config), for probes that had any."""
    out = {}
    for name, res in results.items():
        lat = [it.latency_s for it in res.items if it.error is None]
        if lat:
            out[name] = sum(lat) / len(lat)
    return out


def allocate_streams(counts: Mapping[str, int], slots: int,
                     costs: Mapping[str, float] | None = None) -> dict[str, int]:
    """How many of `slots` start on each probe (name -> item count) when probes run side by side.

    Longest work first: each slot in turn goes to the probe with the most work (items x cost
    per item) per slot already on it, never more slots than items. A probe with many costly
    items (long generations) is spread over several slots from the start instead of running
    alone at the end, while a slot that stays on one probe keeps its few-shot prefix cached.
    Probes that get no slot here start when one frees (`next_probe`).
    """
    c = {n: (costs or {}).get(n, 1.0) for n in counts}
    streams = {n: 0 for n, k in counts.items() if k > 0}
    for _ in range(max(0, slots)):
        open_ = [n for n in streams if streams[n] < counts[n]]
        if not open_:
            break
        best = max(open_, key=lambda n: counts[n] * c[n] / (streams[n] + 1))
        streams[best] += 1
    return {n: k for n, k in streams.items() if k}


def next_probe(waiting: Mapping[str, int], streams: Mapping[str, int],
               costs: Mapping[str, float] | None = None) -> str | None:
    """The probe a slot should move to once its own has no items left, or None to stop.

    Moving costs one pass over the new probe's few-shot prefix in that slot, so a slot joins
    only a probe with more waiting items than slots already on it (otherwise those slots pick
    every waiting item up as they free); among those, the one with the most waiting work
    (items x cost) per slot, so the probe that would finish last gets the help.
    """
    best: tuple[float, str] | None = None
    for name, w in waiting.items():
        s = streams.get(name, 0)
        v = w * (costs or {}).get(name, 1.0) / (s + 1)
        if w > s and (best is None or v > best[0]):
            best = (v, name)
    return best[1] if best else None


def _warn(res: ProbeResult, max_tokens: int) -> None:
    if res.n_errors:
        first = next(r.error for r in res.items if r.error)
        log.warning("probe %s: %d of %d requests failed (first: %s)", res.name, res.n_errors,
                    len(res.items), first)
    if res.n_truncated:
        log.warning("probe %s: %d items ran out of max_tokens=%d while thinking",
                    res.name, res.n_truncated, max_tokens)


def run_jobs(
    base_url: str,
    jobs: Mapping[str, ProbeJob],
    *,
    slots: int | None = None,
    chat: bool = False,
    no_think: bool = False,
    timeout: float = 60.0,
    costs: Mapping[str, float] | None = None,
    progress: bool = False,
) -> dict[str, ProbeResult]:
    """Run several probes side by side on one server and score each; keyed like `jobs` (a job
    without items gets an empty result).

    `slots` workers (default: the server's /props total_slots, at most the number of items)
    each send one request at a time, pinned to their own server slot, so requests in flight
    never exceed the slots (an item timeout measures the item, not a queue) and each slot's
    prompt cache keeps the few-shot prefix of the probe it serves. Workers start spread over the
    probes by work, longest first (`allocate_streams`, per-item `costs` from `item_costs`); a
    worker whose probe runs out joins the probe with the most work left (`next_probe`). Results
    come back in item order; with one slot, runs are deterministic.
    """
    pending = {name: job for name, job in jobs.items() if job.items}
    results, span = _send(base_url, pending, slots=slots, chat=chat, no_think=no_think,
                          timeout=timeout, costs=costs, progress=progress) if pending else ({}, {})
    out: dict[str, ProbeResult] = {}
    for name, job in jobs.items():
        items = [r for r in results.get(name, []) if r is not None]
        t0, t1 = span.get(name, (0.0, 0.0))
        out[name] = aggregate(job.probe, job.split, job.mode, chat, items, max(0.0, t1 - t0))
        _warn(out[name], job.probe.settings.max_tokens)
    return out


def _send(base_url: str, jobs: Mapping[str, ProbeJob], *, slots: int | None, chat: bool,
          no_think: bool, timeout: float, costs: Mapping[str, float] | None, progress: bool
          ) -> tuple[dict[str, list[ItemResult | None]], dict[str, list[float]]]:
    """The workers of `run_jobs` for jobs that all have items: (probe -> results in item order,
    probe -> [first request sent, last reply])."""
    client = LlamaClient(base_url, timeout=timeout)
    counts = {n: len(j.items) for n, j in jobs.items()}
    total = sum(counts.values())
    workers = max(1, min(int(slots if slots is not None else client.total_slots()), total))
    queues = {name: deque(enumerate(job.items)) for name, job in jobs.items()}
    results: dict[str, list[ItemResult | None]] = {n: [None] * k for n, k in counts.items()}
    span: dict[str, list[float]] = {}
    cost = item_costs(jobs, costs)
    # allocate_streams gives out every slot (workers <= items), so each worker starts on a probe
    streams = allocate_streams(counts, workers, cost)  # probe -> workers serving it now
    homes = [name for name, k in streams.items() for _ in range(k)]
    lock = threading.Lock()
    stop = threading.Event()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=",".join(jobs), unit="item", leave=False)

    def take(home: str) -> tuple[str, int, Item] | None:
        """The next (probe, index, item) for a worker serving `home`, or None when done."""
        with lock:
            if not queues[home]:
                streams[home] -= 1
                moved = next_probe({n: len(q) for n, q in queues.items()}, streams, cost)
                if moved is None:
                    return None
                home = moved
                streams[home] = streams.get(home, 0) + 1
            idx, item = queues[home].popleft()
            span.setdefault(home, [time.perf_counter(), 0.0])
            return home, idx, item

    def work(slot: int, home: str) -> None:
        client.use_slot(slot)
        while not stop.is_set():
            got = take(home)
            if got is None:
                return
            home, idx, item = got
            job = jobs[home]
            fn = _run_logprob if job.mode == "logprob" else _run_generate
            res = fn(client, job.probe, item, chat, no_think)
            with lock:
                results[home][idx] = res
                span[home][1] = time.perf_counter()
            if bar:
                bar.update(1)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe")
    try:
        futures = [pool.submit(work, w, home) for w, home in enumerate(homes)]
        for f in futures:
            f.result()
    except BaseException:
        # Ctrl-C/SIGTERM or a bug in a worker: no new requests, and don't wait for the ones in
        # flight here; the caller stops the server, which ends them.
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        if bar:
            bar.close()
    pool.shutdown(wait=True)
    return results, span


def run_probe(
    base_url: str,
    probe: Probe | str,
    *,
    split: str = "dev",
    n: int | None = None,
    offset: int = 0,
    item_ids: Iterable[str] | None = None,
    mode: str = "auto",
    chat: bool = False,
    no_think: bool = False,
    concurrency: int | None = None,
    timeout: float = 60.0,
    progress: bool = False,
) -> ProbeResult:
    """Run one probe against the llama-server at base_url and score it.

    Items are sent concurrently (up to the server's slot count from /props unless `concurrency`
    is given) and come back in item order; at concurrency 1 runs are deterministic.
    `chat` selects /v1/chat/completions (models with a chat template) over /completion;
    `no_think` passes chat_template_kwargs {"enable_thinking": false}.
    """
    job = ProbeJob.select(probe, split=split, n=n, offset=offset, item_ids=item_ids, mode=mode)
    return run_jobs(base_url, {job.probe.name: job}, slots=concurrency, chat=chat,
                    no_think=no_think, timeout=timeout, progress=progress)[job.probe.name]


def run_suite(
    base_url: str,
    suite: Sequence[SuiteEntry] | str,
    *,
    mode: str = "auto",
    chat: bool = False,
    no_think: bool = False,
    split: str | None = None,
    concurrency: int | None = None,
    timeout: float = 60.0,
    progress: bool = False,
) -> dict[str, ProbeResult]:
    """Run every entry of a suite side by side (`run_jobs`); `split` overrides each entry's
    split; `concurrency` caps the requests in flight (default: the server's slots)."""
    entries = parse_suite(suite) if isinstance(suite, str) else list(suite)
    jobs = [ProbeJob.select(e.probe, split=split or e.split, n=e.n, mode=mode) for e in entries]
    names = [j.probe.name for j in jobs]
    dup = sorted({x for x in names if names.count(x) > 1})
    if dup:
        raise ProbeError(f"probe suite has two probes named {', '.join(dup)}")
    return run_jobs(base_url, {j.probe.name: j for j in jobs}, slots=concurrency, chat=chat,
                     no_think=no_think, timeout=timeout, progress=progress)
