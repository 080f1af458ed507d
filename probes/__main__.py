"""`python -m probes`: list probes, show items, validate custom probe files, run a suite.

  python -m probes                         list built-in probes (name, version, hash, counts, modes)
  python -m probes --json                  the same as JSON
  python -m probes --show math [--split test] [--limit 5] [--prompt]
  python -m probes --validate my_probe.jsonl [more files...]
  python -m probes --run "math:12,eq:8" --url http://127.0.0.1:8080 [--mode logprob] [--chat]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

import cli

from .loader import Probe, ProbeError, builtin_names, get_probe, load_probe, parse_suite
from .runner import chat_messages, completion_prompt, run_suite


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
    for msg in bad:
        print(f"error: {msg}", file=sys.stderr)
    return 2 if bad else 0


def _show(name: str, split: str, limit: int | None, prompt: bool, chat: bool) -> int:
    p = get_probe(name)
    print(json.dumps({k: v for k, v in p.summary().items()}, indent=2))
    print(json.dumps({"settings": p.settings.to_dict()}, indent=2, ensure_ascii=False))
    for it in p.select(split, n=limit):
        d = it.to_dict()
        if prompt:
            d["rendered"] = chat_messages(p, it) if chat else completion_prompt(p, it)
        print(json.dumps(d, ensure_ascii=False))
    return 0


def _validate(paths: Sequence[str]) -> int:
    rc = 0
    for path in paths:
        try:
            p = load_probe(path)
        except ProbeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            rc = 2
            continue
        c = p.counts()
        print(f"ok: {path}: probe {p.name!r} v{p.version} hash {p.hash} scorer {p.scorer} "
              f"dev {c['dev']} test {c['test']} modes {','.join(p.modes)}")
    return rc


def _run(args: argparse.Namespace) -> int:
    if not args.url:
        print("error: --run needs --url (the llama-server base URL)", file=sys.stderr)
        return 2
    suite = parse_suite(args.run)
    results = run_suite(args.url, suite, mode=args.mode, chat=args.chat, no_think=args.no_think,
                        split=args.split_override, concurrency=args.concurrency,
                        timeout=args.timeout, progress=True)
    out = {name: r.to_dict(items=args.items) for name, r in results.items()}
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The probes CLI, under the shared protocol (one line and exit 2 for bad input)."""
    return cli.run(PROG, _main, argv, usage_errors=(ProbeError,))


PROG = "python -m probes"


def _main(argv: Sequence[str]) -> int:
    ap = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--show", metavar="PROBE", help="print a probe's settings and items")
    g.add_argument("--validate", metavar="FILE", nargs="+", help="load probe files and report")
    g.add_argument("--run", metavar="SUITE", help='run a suite, e.g. "math:12,eq:8@test,my.jsonl"')
    ap.add_argument("--json", action="store_true", help="listing as JSON")
    ap.add_argument("--split", default="dev", choices=["dev", "test"], help="split for --show")
    ap.add_argument("--limit", type=int, default=None, help="items to print with --show")
    ap.add_argument("--prompt", action="store_true", help="with --show: add the rendered prompt")
    ap.add_argument("--url", help="llama-server base URL for --run")
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
        return _show(args.show, args.split, args.limit, args.prompt, args.chat)
    if args.validate:
        return _validate(args.validate)
    if args.run:
        return _run(args)
    return _list(args.json)


if __name__ == "__main__":
    sys.exit(main())
