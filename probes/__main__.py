"""`rys-probes`: list probes, show items, validate custom probe files, run a suite.

  rys-probes                         list built-in probes (name, version, hash, counts, modes)
  rys-probes --json                  the same as JSON
  rys-probes --show math [--split test] [--limit 5] [--prompt] [--json]
  rys-probes --validate my_probe.jsonl [more files...]
  rys-probes --run "math:12,eq:8" --url http://127.0.0.1:8080 [--mode logprob] [--chat]
  rys-probes --run "math:12,eq:8" --model M.gguf [--path SPEC] [--engine auto]
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Sequence

import requests

from rys import cli

from .loader import Probe, ProbeError, builtin_names, get_probe, load_probe, parse_suite
from .runner import chat_messages, completion_prompt, run_suite

PROG = "rys-probes"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _list(as_json: bool) -> int:
    probes: list[Probe] = []
    bad = []
    for name in builtin_names():
        try:
            probes.append(get_probe(name))
        except ProbeError as exc:
            bad.append(str(exc))
    if as_json:
        print(json.dumps([p.summary() for p in probes], indent=2))
    else:
        rows = [[p.name, p.version, p.hash, p.counts()["dev"], p.counts()["test"],
                 ",".join(p.modes), p.scorer, "generated" if p.generator else "listed"]
                for p in probes]
        print(_table(rows, ["name", "version", "hash", "dev", "test", "modes", "scorer", "items"]))
    if bad:
        raise ProbeError("; ".join(bad))
    return 0


def _rendered(p: Probe, item, chat: bool):
    return chat_messages(p, item) if chat else completion_prompt(p, item)


def _show(name: str, split: str, limit: int | None, prompt: bool, chat: bool,
          as_json: bool) -> int:
    """A probe for people (settings, then each item and, with --prompt, the prompt exactly as
    sent) or, with --json, as one JSON document."""
    p = get_probe(name)
    items = p.select(split, n=limit)
    if as_json:
        doc = {"probe": p.summary(), "settings": p.settings.to_dict(), "split": split,
               "items": [dict(it.to_dict(), **({"rendered": _rendered(p, it, chat)}
                                               if prompt else {})) for it in items]}
        print(json.dumps(doc, indent=2, ensure_ascii=False))
        return 0
    s = p.summary()
    print(f"probe {s['name']} v{s['version']} (hash {s['hash']}), scorer {p.scorer}, modes "
          f"{','.join(p.modes)}; dev {s['n_dev']}, test {s['n_test']} items")
    if s.get("description"):
        print(s["description"])
    print("settings: " + json.dumps(p.settings.to_dict(), ensure_ascii=False))
    print(f"{len(items)} {split} item(s):")
    for it in items:
        d = it.to_dict()
        print(f"\n--- {d['id']}  reference: {json.dumps(d.get('reference'), ensure_ascii=False)}")
        if prompt:
            rendered = _rendered(p, it, chat)
            if isinstance(rendered, str):
                print(rendered)
            else:  # chat messages
                for m in rendered:
                    print(f"[{m['role']}] {m['content']}")
        else:
            print(d.get("prompt") or json.dumps(d.get("messages"), ensure_ascii=False))
    return 0


def _validate(paths: Sequence[str]) -> int:
    bad = []
    for path in paths:
        try:
            p = load_probe(path)
        except ProbeError as exc:
            bad.append(str(exc))
            continue
        c = p.counts()
        print(f"ok: {path}: probe {p.name!r} v{p.version} hash {p.hash} scorer {p.scorer} "
              f"dev {c['dev']} test {c['test']} modes {','.join(p.modes)}")
    if bad:
        raise ProbeError("; ".join(bad))
    return 0


def _check_reachable(url: str) -> None:
    """UsageError when nothing answers at the URL (a wrong port is bad input, not a zero)."""
    try:
        requests.get(url.rstrip("/") + "/health", timeout=10)
    except requests.RequestException as exc:
        reason = "no answer within 10 s" if isinstance(exc, requests.Timeout) else \
            "connection refused" if isinstance(exc, requests.ConnectionError) else \
            type(exc).__name__
        raise cli.UsageError(f"nothing answers at {url} ({reason}): start llama-server there, or "
                             f"pass --model MODEL.gguf to let rys start one") from None


def _run_suite(args, url: str, chat: bool) -> dict:
    suite = parse_suite(args.run)
    results = run_suite(url, suite, mode=args.mode, chat=chat, no_think=args.no_think,
                        split=args.split_override, concurrency=args.concurrency,
                        timeout=args.timeout, progress=True)
    if results and all(r.n == 0 and r.n_errors for r in results.values()):
        first = next((it.error for r in results.values() for it in r.items if it.error), "?")
        raise cli.Failure(f"every request failed (first: {first})")
    return {name: r.to_dict(items=args.items) for name, r in results.items()}


def _run(args) -> int:
    if bool(args.url) == bool(args.model):
        raise cli.UsageError("--run needs either --url (a running llama-server) or --model "
                             "MODEL.gguf (rys starts one)")
    if args.url:
        if args.path or args.engine != "auto":
            raise cli.UsageError("--path/--engine go with --model, not --url")
        _check_reachable(args.url)
        out = _run_suite(args, args.url, args.chat)
    else:
        out = _serve_and_run(args)
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


def _serve_and_run(args) -> dict:
    """Serve MODEL (along --path) through the engine rys-sweep uses, then run the suite."""
    import tempfile

    from rys import engine as E
    from rys import gguf_surgery
    from rys import layer_path
    from rys import llama_server as LS

    model = Path(args.model)
    source = gguf_surgery.SourceModel.open_arg(model)
    try:
        path = layer_path.parse(args.path, source.n_layers) if args.path else None
        binary = LS.find_llama_server(args.llama_server)
        name = E.resolve_engine(args.engine, binary)
        extra = shlex.split(args.server_args)
    except (layer_path.LayerPathError, LS.ServerError, E.EngineError, ValueError) as exc:
        raise cli.UsageError(str(exc)) from None
    settings = E.ServerSettings(binary=binary, extra_args=extra, parallel=args.parallel,
                                ctx_size=E.DEFAULT_CTX_PER_SLOT * args.parallel)
    eng = E.make_engine(name, source, settings)
    if path is not None:
        try:
            eng.check(path)
        except (gguf_surgery.SurgeryError, E.EngineError) as exc:
            raise cli.UsageError(str(exc)) from None
    chat = args.chat or source.has_chat_template
    with tempfile.TemporaryDirectory(prefix="rys-probes-") as d, eng:
        try:
            with eng.serve(path, Path(d) / "server.log") as served:
                out = _run_suite(args, served.url, chat)
        except (LS.ServerError, gguf_surgery.SurgeryError, E.EngineError, E.NoSpace) as exc:
            raise cli.Failure(str(exc)) from None
    return {"served": {"model": str(model.resolve()), "path": None if path is None else
                       layer_path.format(path), "engine": name}, "results": out}


def main(argv: Sequence[str] | None = None) -> int:
    """The probes CLI, under the shared protocol (one line and exit 2 for bad input)."""
    return cli.run(PROG, _main, argv, usage_errors=(ProbeError,))


def _main(argv: Sequence[str]) -> int:
    ap = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog=__doc__.split("\n", 2)[2])
    ap.dashed_value_options = ("--server-args",)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--show", metavar="PROBE", help="print a probe's settings and items")
    g.add_argument("--validate", metavar="FILE", nargs="+", help="load probe files and report")
    g.add_argument("--run", metavar="SUITE", help='run a suite, e.g. "math:12,eq:8@test,my.jsonl"')
    ap.add_argument("--json", action="store_true",
                    help="the listing, or --show, as one JSON document")
    ap.add_argument("--split", default="dev", choices=["dev", "test"], help="split for --show")
    ap.add_argument("--limit", type=int, default=None, help="items to print with --show")
    ap.add_argument("--prompt", action="store_true",
                    help="with --show: the prompt of each item exactly as it is sent")
    ap.add_argument("--url", help="with --run: a running llama-server's base URL")
    ap.add_argument("--model", metavar="MODEL.gguf",
                    help="with --run: start llama-server on this model (instead of --url)")
    ap.add_argument("-p", "--path", metavar="SPEC", help="with --model: serve this layer path")
    ap.add_argument("--engine", choices=("auto", "physical", "virtual"), default="auto",
                    help="with --model: how the path is served (see rys-sweep --engine)")
    ap.add_argument("--llama-server", metavar="PATH", help="with --model: the binary")
    ap.add_argument("--server-args", default="", metavar="ARGS",
                    help="with --model: extra llama-server arguments")
    ap.add_argument("--parallel", type=int, default=4, help="with --model: server slots")
    ap.add_argument("--mode", default="auto", choices=["auto", "generate", "logprob"])
    ap.add_argument("--chat", action="store_true", help="use /v1/chat/completions (chat models)")
    ap.add_argument("--no-think", action="store_true", help="pass enable_thinking=false")
    ap.add_argument("--split-override", choices=["dev", "test"], default=None,
                    help="with --run: run every probe on this split")
    ap.add_argument("--concurrency", type=int, default=None, help="default: server slots")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    ap.add_argument("--items", action="store_true", help="with --run: include per-item results")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.show:
        return _show(args.show, args.split, args.limit, args.prompt, args.chat, args.json)
    if args.validate:
        return _validate(args.validate)
    if args.run:
        return _run(args)
    return _list(args.json)


if __name__ == "__main__":
    sys.exit(main())
