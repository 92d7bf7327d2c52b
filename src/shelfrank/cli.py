"""The ``shelfrank`` command: a thin shim over library functions, heavy imports inside subcommands."""

from __future__ import annotations

import argparse
import json
import sys

from shelfrank import __version__
from shelfrank.errors import ShelfrankError


def _cmd_info(args: argparse.Namespace) -> int:
    from shelfrank.sysinfo import system_info

    info = system_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            if isinstance(value, list):
                value = ", ".join(map(str, value))
            print(f"{key:<{width}}  {value}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.target == "kernel":
        from shelfrank.device.bench_kernel import main as bench_kernel_main

        return bench_kernel_main(args)
    raise ShelfrankError(
        f"bench {args.target!r}: the whole-pipeline bench of a bundle is not built yet; "
        "run 'shelfrank bench kernel' (a folder named 'kernel' is passed as ./kernel)"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shelfrank", description="On-device e-commerce recommendation.")
    p.add_argument("--version", action="version", version=f"shelfrank {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="version, CPU, kernel ISA paths, onnxruntime providers")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_cmd_info)

    bench = sub.add_parser("bench", help="benchmarks: 'kernel' (top-k kernel only) or a bundle path")
    bench.add_argument("target", help="'kernel', or a bundle path")
    bench.add_argument("--json", metavar="OUT", help="write the results as JSON to OUT")
    bench.add_argument("--md", metavar="OUT", help="write the report as Markdown to OUT")
    bench.add_argument("--quick", action="store_true", help="smaller sweep for a fast look")
    bench.add_argument("--sizes", help="comma-separated catalog sizes (default 10000,100000,1000000)")
    bench.add_argument("--threads", help="comma-separated thread counts (default 1,2)")
    bench.add_argument("--repeats", type=int, default=None, help="timed repetitions per cell")
    bench.add_argument(
        "--real-embeddings",
        metavar="NPY",
        help="float32 (N, d) embeddings for the int8 recall check (default: computed or cached)",
    )
    bench.set_defaults(func=_cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ShelfrankError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
