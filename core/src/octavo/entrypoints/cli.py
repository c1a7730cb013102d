"""The `octavo` command: generate, serve, chat, complete, bench, plugins."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from octavo.platform import PlatformInfo


def _generate(args: argparse.Namespace) -> int:
    from octavo import EngineArgs, SamplingParams
    from octavo.entrypoints.llm import LLM

    eargs = EngineArgs.from_cli_args(args)
    llm = LLM(**vars(eargs))
    params = SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_tokens=args.max_tokens,
        seed=args.sampling_seed,
    )
    prompts = args.prompts or ["The capital of France is"]
    if args.chat:
        outs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params, use_tqdm=False)
    else:
        outs = llm.generate(prompts, params, use_tqdm=False)
    for prompt, out in zip(prompts, outs):
        c = out.outputs[0]
        print(f"--- {prompt!r} ({len(out.prompt_token_ids)} tokens -> {len(c.token_ids)}, {c.finish_reason})")
        print(prompt + c.text if not args.chat else c.text)
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from octavo.platform import API_VERSION, discover_platforms

    if args.plugins_cmd == "check":
        from octavo_plugin_kit.cli import run_check

        return run_check(args.name, args.pytest_args)
    if args.plugins_cmd == "new":
        from octavo_plugin_kit.cli import new_plugin

        print(new_plugin(args.name, args.dest))
        return 0
    infos = discover_platforms()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": i.name,
                        "package": i.package,
                        "version": i.package_version,
                        "api_version": i.api_version,
                        "usable": i.usable,
                        "score": i.score,
                        "reason": i.reason,
                        "error": i.error,
                        "verified": _verified(i),
                    }
                    for i in infos
                ],
                indent=2,
            )
        )
        return 0
    print(f"octavo plugin API {API_VERSION}")
    ordered = sorted(infos, key=lambda i: -i.score)
    rows = [("PLATFORM", "PACKAGE", "VERSION", "API", "USABLE", "SCORE", "REASON")]
    for i in ordered:
        rows.append(
            (
                i.name,
                i.package,
                i.package_version,
                i.api_version,
                "yes" if i.usable else "no",
                str(i.score),
                i.error or i.reason,
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(6)]
    print("  ".join(rows[0][c].ljust(widths[c]) for c in range(6)) + "  " + rows[0][6])
    for i, r in zip(ordered, rows[1:]):
        print("  ".join(r[c].ljust(widths[c]) for c in range(6)) + "  " + r[6])
        # the plugin's own line on what was verified where: usable here or not, users weigh it
        print(f"{'':{widths[0]}}  verified: {_verified(i) or 'not stated by the plugin'}")
    if not infos:
        print("no platforms installed; try: pip install octavo-cpu")
    return 0


def _verified(info: PlatformInfo) -> str:
    """The platform's own line on what was verified where (`Platform.verified`), or ""."""
    return str(getattr(info.platform_cls, "verified", "") or "")


def build_parser() -> argparse.ArgumentParser:
    from octavo import EngineArgs, __version__

    parser = argparse.ArgumentParser(prog="octavo", description="Octavo LLM inference engine")
    parser.add_argument("--version", action="version", version=f"octavo {__version__}")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate text for prompts given on the command line")
    gen.add_argument("prompts", nargs="*", help="prompts (default: one sample prompt)")
    EngineArgs.add_cli_args(gen)
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--sampling-seed", type=int, default=None)
    gen.add_argument("--chat", action="store_true", help="wrap each prompt in the model's chat template")
    gen.set_defaults(func=_generate)

    pl = sub.add_parser("plugins", help="list, check or create platform plugins")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=_plugins, plugins_cmd="list")
    plsub = pl.add_subparsers(dest="plugins_cmd")
    plsub.add_parser("list", help="list discovered platforms")
    chk = plsub.add_parser("check", help="run the conformance suite against a platform")
    chk.add_argument("name")
    chk.add_argument("pytest_args", nargs=argparse.REMAINDER)
    new = plsub.add_parser("new", help="write a new plugin package from the template")
    new.add_argument("name")
    new.add_argument("--dest", default=".")

    bench = sub.add_parser("bench", help="benchmarks")
    bsub = bench.add_subparsers(dest="bench_cmd", required=True)
    from octavo.entrypoints.bench_latency import add_parser as add_latency
    from octavo.entrypoints.bench_throughput import add_parser as add_throughput

    add_throughput(bsub)
    add_latency(bsub)
    try:
        from octavo.entrypoints.bench_serve import add_bench_serve_parser
        from octavo.entrypoints.openai.cli_args import add_serve_parser
    except ImportError as e:  # the server extras are optional
        missing = str(e)

        def _need_serve(args: argparse.Namespace) -> int:
            print(
                f"the server needs its extras ({missing}); install them with: pip install 'octavo[serve]'",
                file=sys.stderr,
            )
            return 2

        for p in (
            sub.add_parser("serve", help="OpenAI-compatible server"),
            bsub.add_parser("serve", help="online benchmark against a running server"),
        ):
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(func=_need_serve)
    else:
        add_serve_parser(sub)
        add_bench_serve_parser(bsub)
    from octavo.entrypoints.clients import add_parsers as add_clients

    add_clients(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(levelname)s %(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # user errors: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
