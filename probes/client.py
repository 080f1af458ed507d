"""A small HTTP client for llama-server: the few endpoints the probes use.

Every call raises RequestError (one line: what failed and why) on a transport error, a timeout,
a non-200 status or an unusable body, so the runner can record the item as an error instead of
scoring it 0. One requests.Session per thread (sessions are not thread-safe). A thread may pin
its generation requests to one server slot (`use_slot`), so that slot's prompt cache holds that
thread's few-shot prefix and no other request evicts it.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

import requests

__all__ = ["RequestError", "Reply", "AnswerLogprob", "LlamaClient", "SEED"]

SEED = 1234  # fixed sampling seed sent with every request (decoding is greedy anyway)


class RequestError(RuntimeError):
    """A failed request: transport error, timeout, HTTP error status or malformed reply."""


@dataclass
class Reply:
    """A generate-mode reply. `finish` is "stop" or "length" (ran out of max_tokens)."""

    content: str
    reasoning: str = ""
    tokens: int = 0
    finish: str = "stop"
    raw: dict = field(default_factory=dict, repr=False)


@dataclass
class AnswerLogprob:
    """The log-probability of one given next token (exact, whatever its rank) and the top-K
    next tokens as ``(id, text, logprob)``, most likely first."""

    logprob: float
    top: list[tuple[int, str, float]]
    text: str = ""  # the given token's text


def _probs_from_entry(entry: dict) -> dict[str, float]:
    """token text -> probability from one completion_probabilities entry (both server formats:
    top_logprobs with logprob, or top_probs with prob when post_sampling_probs is on)."""
    out: dict[str, float] = {}
    if "top_logprobs" in entry:
        for t in entry["top_logprobs"]:
            p = math.exp(t["logprob"]) if t.get("logprob") is not None else 0.0
            out[t["token"]] = out.get(t["token"], 0.0) + p
    elif "top_probs" in entry:
        for t in entry["top_probs"]:
            out[t["token"]] = out.get(t["token"], 0.0) + float(t["prob"])
    elif "probs" in entry:  # very old servers: {"tok_str", "prob"}
        for t in entry["probs"]:
            tok = t.get("tok_str", t.get("token", ""))
            out[tok] = out.get(tok, 0.0) + float(t["prob"])
    else:
        raise RequestError("completion_probabilities entry has no top_logprobs")
    return out


class LlamaClient:
    """Talks to one llama-server at base_url (e.g. http://127.0.0.1:8080)."""

    def __init__(self, base_url: str, timeout: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._single_token: dict[str, bool] = {}

    # -- transport ------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def use_slot(self, slot: int | None) -> None:
        """Send this thread's completion requests to server slot `slot` (llama-server's
        ``id_slot``); None lets the server choose. Other threads are not affected."""
        self._local.slot = slot

    def _pinned(self, body: dict) -> dict:
        slot = getattr(self._local, "slot", None)
        if slot is not None:
            body["id_slot"] = slot
        return body

    def _request(self, method: str, path: str, body: dict | None = None,
                 timeout: float | None = None) -> dict:
        data = self._request_json(method, path, body, timeout)
        if not isinstance(data, dict):
            raise RequestError(f"{method} {path}: reply is not a JSON object")
        return data

    def _request_json(self, method: str, path: str, body: dict | None = None,
                      timeout: float | None = None) -> Any:
        url = self.base_url + path
        t = self.timeout if timeout is None else timeout
        try:
            r = self._session().request(method, url, json=body, timeout=(min(10.0, t), t))
        except requests.Timeout:
            # The abandoned request may still hold the pinned slot on a server that does not
            # cancel on disconnect; later requests of this thread let the server choose a slot.
            self._local.slot = None
            raise RequestError(f"timeout after {t:g}s: {method} {path}") from None
        except requests.RequestException as exc:
            raise RequestError(f"{method} {path} failed: {type(exc).__name__}: {exc}") from None
        if r.status_code != 200:
            msg = r.text.strip().replace("\n", " ")[:200]
            raise RequestError(f"HTTP {r.status_code} from {method} {path}: {msg}")
        try:
            return r.json()
        except ValueError:
            raise RequestError(f"{method} {path}: reply is not JSON") from None

    # -- server info ------------------------------------------------------------------------

    def props(self) -> dict:
        return self._request("GET", "/props", timeout=min(self.timeout, 30.0))

    def total_slots(self) -> int:
        """The server's parallel slot count (1 if /props does not say)."""
        try:
            n = self.props().get("total_slots")
        except RequestError:
            return 1
        return n if isinstance(n, int) and n > 0 else 1

    def tokenize(self, text: str) -> list[Any]:
        return self._request("POST", "/tokenize", {"content": text, "add_special": False})["tokens"]

    def space_joins(self, sample: str) -> bool:
        """Whether " " + sample is one token for this model (e.g. " A" in most BPE vocabularies).

        Decides how logprob prompts end: with "Answer:" when the answer token carries its own
        leading space, with "Answer: " when the tokenizer splits the space off (so the next token
        is the answer itself, not a bare space). Cached per sample.
        """
        with self._lock:
            if sample in self._single_token:
                return self._single_token[sample]
        joined = len(self.tokenize(" " + sample)) == 1
        with self._lock:
            self._single_token[sample] = joined
        return joined

    def apply_template(self, messages: list[dict], template_kwargs: dict | None = None) -> str:
        body: dict[str, Any] = {"messages": messages}
        if template_kwargs:
            body["chat_template_kwargs"] = template_kwargs
        data = self._request("POST", "/apply-template", body)
        if not isinstance(data.get("prompt"), str):
            raise RequestError("/apply-template: no 'prompt' in reply")
        return data["prompt"]

    # -- generation -------------------------------------------------------------------------

    def complete(self, prompt: str, *, max_tokens: int, stop: list[str] | None = None) -> Reply:
        """Greedy raw-text completion (/completion)."""
        body = {
            "prompt": prompt,
            "n_predict": max_tokens,
            "temperature": 0.0,
            "seed": SEED,
            "cache_prompt": True,
            "stop": list(stop or []),
        }
        data = self._request("POST", "/completion", self._pinned(body))
        if not isinstance(data.get("content"), str):
            raise RequestError("/completion: no 'content' in reply")
        limit = data.get("stop_type") == "limit" or (
            data.get("stopped_limit") is True  # older servers
        )
        return Reply(content=data["content"], tokens=int(data.get("tokens_predicted") or 0),
                     finish="length" if limit else "stop", raw=data)

    def chat(self, messages: list[dict], *, max_tokens: int,
             template_kwargs: dict | None = None) -> Reply:
        """Greedy chat completion (/v1/chat/completions, the model's own chat template)."""
        body: dict[str, Any] = {
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "seed": SEED,
            "cache_prompt": True,
        }
        if template_kwargs:
            body["chat_template_kwargs"] = template_kwargs
        data = self._request("POST", "/v1/chat/completions", self._pinned(body))
        try:
            choice = data["choices"][0]
            msg = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise RequestError("/v1/chat/completions: no choices[0].message in reply") from None
        usage = data.get("usage") or {}
        return Reply(content=msg.get("content") or "", reasoning=msg.get("reasoning_content") or "",
                     tokens=int(usage.get("completion_tokens") or 0),
                     finish="length" if choice.get("finish_reason") == "length" else "stop",
                     raw=data)

    def _one_token(self, prompt: str, n_probs: int, **extra: Any) -> dict:
        """One greedy token after ``prompt`` with the top ``n_probs`` (one forward pass)."""
        body = {"prompt": prompt, "n_predict": 1, "n_probs": n_probs, "temperature": 0.0,
                "seed": SEED, "cache_prompt": True, **extra}
        return self._request("POST", "/completion", self._pinned(body))

    def next_token_probs(self, prompt: str, n_probs: int) -> dict[str, float]:
        """Top-n next-token probabilities after `prompt`: one forward pass, one token generated.

        llama-server computes these from the plain softmax of the logits, independent of the
        sampler, so they are the model's own distribution.
        """
        data = self._one_token(prompt, n_probs)
        probs = data.get("completion_probabilities")
        if not isinstance(probs, list) or not probs:
            raise RequestError("/completion: no completion_probabilities in reply")
        return _probs_from_entry(probs[0])

    def answer_logprob(self, prompt: str, token: int, n_probs: int) -> AnswerLogprob:
        """The log-probability of next token ``token`` after ``prompt`` and the top ``n_probs``
        next tokens, from one forward pass.

        The token is made the one generated (``logit_bias``); llama-server reports the
        generated token's probability from the raw logits over the whole vocabulary (like
        ``n_probs``, ``post_sampling_probs`` off), so it is exact even far below the top-K, and
        the bias never touches the distribution reported."""
        data = self._one_token(prompt, n_probs, logit_bias=[[token, 1e4]])
        probs = data.get("completion_probabilities")
        try:
            entry = probs[0]  # type: ignore[index]
            got, logprob, text = int(entry["id"]), float(entry["logprob"]), str(entry["token"])
            top = [(int(t["id"]), str(t["token"]), float(t["logprob"]))
                   for t in entry["top_logprobs"]]
        except (TypeError, IndexError, KeyError, ValueError):
            raise RequestError("/completion: no completion_probabilities with logprobs in reply "
                               "(post_sampling_probs on?)") from None
        if got != token:
            raise RequestError(f"/completion generated token {got}, not the forced {token}")
        return AnswerLogprob(logprob, top, text)

    def embeddings(self, texts: list[str]) -> list[list[list[float]]]:
        """The hidden states llama-server returns for each text (``/embedding``, not normalised):
        one row per text with pooling (``--pooling last`` ...), one row per token without
        (``--pooling none``). Needs a server started with ``--embeddings``."""
        data = self._request_json("POST", "/embedding", {"content": list(texts),
                                                         "embd_normalize": -1})
        try:
            rows = sorted(data, key=lambda d: d.get("index", 0))
            out = [[[float(x) for x in row] for row in d["embedding"]] for d in rows]
        except (TypeError, KeyError, AttributeError, ValueError):
            raise RequestError("/embedding: no embeddings in reply") from None
        if len(out) != len(texts):
            raise RequestError(f"/embedding: {len(out)} embeddings for {len(texts)} texts")
        return out
