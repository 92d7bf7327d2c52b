"""The ``shelfrank`` command: a thin shim over library functions, heavy imports inside subcommands."""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import sys
from pathlib import Path

from shelfrank import __version__
from shelfrank.errors import InputError, ShelfrankError


def _cmd_info(args: argparse.Namespace) -> int:
    from shelfrank.bench.sysinfo import system_info

    info = system_info()
    if args.bundle:
        info["text_encoder"] = _encoder_choice(args.bundle, args.board)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            if isinstance(value, list):
                value = ", ".join(map(str, value))
            elif isinstance(value, dict):
                value = "; ".join(f"{k}: {v}" for k, v in value.items())
            print(f"{key:<{width}}  {value}")
    return 0


def _encoder_choice(bundle: str, board: str | None) -> dict:
    """Which text encoder a board runs from this bundle (verified with its own key: a diagnostic)."""
    from pathlib import Path

    from shelfrank.device import bundle as bfmt
    from shelfrank.device.encoder import open_text_encoder

    root = Path(bundle).resolve()
    manifest = bfmt.verify_bundle(root)
    threads, providers, gpu = 1, None, None
    if board:
        from shelfrank.device.boards import load_board

        cfg = load_board(board)
        threads, providers, gpu = cfg.threads, cfg.ort_providers(), cfg.gpu_ort_providers()
    _enc, choice = open_text_encoder(root, manifest, threads=threads, providers=providers, gpu_providers=gpu)
    return choice


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.real_embeddings and not Path(args.real_embeddings).is_file():
        raise InputError(f"--real-embeddings {args.real_embeddings}: no such file (a float32 (N, d) .npy)")
    if args.target == "kernel":
        from shelfrank.bench.kernel import main as bench_kernel_main

        return bench_kernel_main(args)
    from shelfrank.device import bundle as bfmt

    target = Path(args.target)
    if not target.exists():
        close = difflib.get_close_matches(args.target, ["kernel"], n=1, cutoff=0.6)
        hint = "did you mean 'kernel'?" if close else "give 'kernel' or a bundle directory"
        raise InputError(f"bench {args.target}: no such bundle directory; {hint}")
    # every file the bench reads is checked first: a folder that is no bundle names what is missing
    bfmt.verify_bundle(target, public_key=args.public_key)
    if args.baselines and not Path(args.baselines).is_dir():
        raise InputError(f"--baselines {args.baselines}: no such directory (the export's BUNDLE.baselines)")
    from shelfrank.bench.pipeline import main as bench_pipeline_main

    return bench_pipeline_main(args)


def _int_list(text: str) -> str:
    """An argparse type: comma-separated positive integers (kept as text for the bench modules)."""
    try:
        ok = all(int(x) >= 1 for x in text.split(","))
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return text


def _log_progress() -> None:
    """INFO from shelfrank's own loggers to stderr; other libraries stay at WARNING."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("shelfrank").setLevel(logging.INFO)


def _cmd_keygen(args: argparse.Namespace) -> int:
    from shelfrank.device.bundle import generate_keypair, key_id, load_public_key

    key, pub = generate_keypair(args.out)
    print(f"wrote {key} (private, mode 0600) and {pub}; key id {key_id(load_public_key(pub))[:16]}…")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from shelfrank.extras import missing_extra, missing_extra_message

    try:
        return _export(args)
    except ImportError as e:
        name = missing_extra(e, "export")
        if name is None:
            raise  # not the extra: a bug, with its traceback
        raise ShelfrankError(missing_extra_message("export", "shelfrank export", module=name)) from e


def _export(args: argparse.Namespace) -> int:
    _log_progress()
    from shelfrank.export import data
    from shelfrank.export.pipeline import run_export

    if args.dataset == "demo":
        from shelfrank.export.demo_shop import make_demo_shop

        ds = make_demo_shop()
    elif args.dataset == "amazon-games":
        root = args.data_dir or os.environ.get("SHELFRANK_DATA") or "../shared/data"
        ds = data.load_amazon_games(root)
    else:
        if not (args.items and args.events):
            raise ShelfrankError("--dataset files needs --items PATH and --events PATH")
        ds = data.load_files(args.items, args.events)
    split = data.make_split(ds, args.split)
    res = run_export(
        ds,
        args.out,
        key=args.key,
        preset=args.preset,
        teacher=args.teacher,
        resume=args.resume,
        split=split,
        fp16=args.fp16,
    )
    from shelfrank.export.pipeline import render_quality

    print(render_quality(res.quality))
    print(f"bundle: {res.out} ({res.seconds / 60:.1f} min); baselines: {res.out}.baselines")
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    _log_progress()
    from shelfrank.device.bundle import load_private_key
    from shelfrank.export.publish import publish_update

    key = load_private_key(args.key)
    opts = dict(items=args.items, rules=args.rules, stock=args.stock, expires_days=args.expires_days)
    print("\n".join(publish_update(args.bundle, args.out, key=key, **opts)))
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    _log_progress()
    from shelfrank.device import Recommender
    from shelfrank.device.sync import sync

    cfg = None
    if args.board:
        from shelfrank.device.boards import load_board

        cfg = load_board(args.board)
    rec = Recommender.open(args.bundle, public_key=args.public_key, state_dir=args.state, board=args.board)
    try:
        res = sync(rec, args.source, board=cfg)
    finally:
        rec.close()
    print(
        f"catalog {res.from_version} → {res.to_version} ({res.method}, "
        f"{res.downloaded_bytes:,} bytes) from {res.source}; rules {res.rules}, stock {res.stock}"
    )
    return 0


def _print_json_or(args: argparse.Namespace, data: dict) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data))
    else:
        for key, value in data.items():
            print(f"{key:>16}  {value}")


def _cmd_flash(args: argparse.Namespace) -> int:
    from shelfrank.deploy.flash import flash

    res = flash(
        args.bundle,
        args.to,
        board=args.board,
        public_key=args.public_key,
        python=args.python,
        service=args.service,
        unit_dir=args.unit_dir,
        sync_url=args.sync_url,
        install_runtime=args.install_runtime,
        wheelhouse=args.wheelhouse,
        online=args.online,
        allow_arch_mismatch=args.allow_arch_mismatch,
    )
    print(
        f"flashed {args.bundle} to {res.target}: {res.slot} is current (previous: {res.previous or 'none'}); "
        f"{res.sent_files} file(s) sent, {res.skipped_files} already there"
    )
    if res.runtime:
        print(f"runtime: {res.runtime} (PREFIX/runtime/venv/bin/shelfrank)")
    return 0


def _cmd_health(args: argparse.Namespace) -> int:
    from shelfrank.deploy.flash import health

    print(json.dumps(health(args.bundle, public_key=args.public_key, state=args.state, board=args.board)))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from shelfrank.deploy.flash import remote_call, status_local
    from shelfrank.deploy.target import SshTarget, make_target

    if isinstance(make_target(args.prefix), SshTarget):  # a malformed ssh:/… is refused, not a folder
        _print_json_or(args, remote_call(args.prefix, "status", args.python))
    else:
        _print_json_or(args, status_local(args.prefix))
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from shelfrank.deploy.flash import remote_call, rollback_local
    from shelfrank.deploy.target import SshTarget, make_target

    if isinstance(make_target(args.prefix), SshTarget):  # a malformed ssh:/… is refused, not a folder
        _print_json_or(args, remote_call(args.prefix, "rollback", args.python))
    else:
        _print_json_or(args, rollback_local(args.prefix))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    _log_progress()
    logging.getLogger("shelfrank.device.service.serve.access").setLevel(
        logging.INFO if args.access_log else logging.WARNING
    )
    import signal
    import threading

    from shelfrank.device import Recommender
    from shelfrank.device.service.endpoints import Service
    from shelfrank.device.service.serve import start

    if args.no_tcp and not args.unix:
        raise ShelfrankError("--no-tcp needs --unix PATH (there would be nothing to listen on)")
    rec = Recommender.open(args.bundle, board=args.board, public_key=args.public_key, state_dir=args.state)
    try:
        if args.board:
            from shelfrank.device.boards import check_catalog_size, load_board

            check_catalog_size(load_board(args.board), len(rec.catalog), f"catalog version {rec.catalog.version}")
        service = Service(rec, board=args.board)
        servers = start(service, host=args.host, port=None if args.no_tcp else args.port, unix=args.unix, ui=args.ui)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        print(
            f"shelfrank serve: listening on {' and '.join(servers.urls)} (catalog version {rec.catalog.version})",
            flush=True,
        )
        stop.wait()
        print("shelfrank serve: stopping", file=sys.stderr, flush=True)
        servers.close()
    finally:
        rec.close()
    return 0


def _state_option(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    """``--state DIR`` on every sub-command that has a state folder; ``--state-dir`` is its old name."""
    p.add_argument(
        "--state",
        "--state-dir",
        dest="state",
        metavar="DIR",
        required=required,
        help="state folder (events, synced catalogs, trusted.pub)"
        + (
            "" if required else "; default: PREFIX/state for a flashed layout, else $SHELFRANK_STATE or $XDG_STATE_HOME"
        ),
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shelfrank", description="On-device e-commerce recommendation.")
    p.add_argument("--version", action="version", version=f"shelfrank {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="version, CPU, kernel ISA paths, onnxruntime providers")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.add_argument("--bundle", help="also load this bundle's text encoder and say which one runs, on what")
    info.add_argument("--board", help="board config for --bundle (its providers and gpu_providers)")
    info.set_defaults(func=_cmd_info)

    kg = sub.add_parser("keygen", help="make an Ed25519 publisher key pair (KEY, KEY.pub)")
    kg.add_argument("--out", required=True, metavar="KEY", help="private key path (KEY.pub is written beside it)")
    kg.set_defaults(func=_cmd_keygen)

    ex = sub.add_parser("export", help="train, distil, quantise and write a signed bundle (needs [export])")
    ex.add_argument("--dataset", choices=["demo", "amazon-games", "files"], default="demo")
    ex.add_argument("--data-dir", help="shared/data folder for amazon-games (default $SHELFRANK_DATA)")
    ex.add_argument("--items", help="items file (CSV/JSONL/Parquet) for --dataset files")
    ex.add_argument(
        "--events",
        help="events file for --dataset files: user_id, item_id, action (view|click|cart|purchase), optional ts "
        "(epoch seconds, or ISO 8601 such as '2020-03-01 09:30:00', '2020-03-01T09:30:00Z', "
        "'2020-03-01T09:30:00.250+02:00', '2020-03-01'; no zone = UTC; equal ts keep file order)",
    )
    ex.add_argument(
        "--split",
        choices=["leave-one-out", "time"],
        default="leave-one-out",
        help="held-out cases: each shopper's last two steps (default), or a global time cut at the "
        "90%%/80%% quantiles of ts (needs ts; the cut is logged and in the quality report)",
    )
    ex.add_argument("--out", required=True, help="bundle directory to write")
    ex.add_argument("--preset", choices=["quick", "full"], default="quick")
    ex.add_argument("--key", required=True, help="Ed25519 private key (shelfrank keygen)")
    ex.add_argument("--teacher", help="local Hugging Face BERT directory (default: packaged all-MiniLM-L6-v2)")
    ex.add_argument("--resume", action="store_true", help="reuse the checkpoints in OUT.work/")
    ex.add_argument(
        "--fp16", action="store_true", help="also write an fp16 encoder for GPU providers (Jetson), parity-gated"
    )
    ex.set_defaults(func=_cmd_export)

    pb = sub.add_parser("publish", help="publish a catalog update (signed index + snapshot + delta), rules, stock")
    pb.add_argument("--bundle", required=True, help="the bundle the devices run (its encoder embeds new items)")
    pb.add_argument("--items", help="the shop's whole current item list (CSV/JSONL/Parquet): a new catalog version")
    pb.add_argument("--rules", help="a merchandising rules document (JSON, docs/device.md) for the devices")
    pb.add_argument("--stock", help='live stock/price, JSON {item_id: {"in_stock": bool, "price": number}}')
    pb.add_argument("--out", required=True, help="the folder a static HTTP server or CDN serves")
    pb.add_argument("--key", required=True, help="the publisher's Ed25519 private key")
    pb.add_argument("--expires-days", type=float, default=30.0, help="devices refuse the index after this")
    pb.set_defaults(func=_cmd_publish)

    sy = sub.add_parser("sync", help="on the device: fetch and apply the newest catalog")
    sy.add_argument("bundle", help="bundle directory or PREFIX/current")
    sy.add_argument("source", help="http(s):// URL or directory of a published catalog")
    sy.add_argument("--public-key", help="trusted publisher key (default: state/trusted.pub, else unpinned)")
    _state_option(sy)
    sy.add_argument("--board", help="board config: its max_catalog_items refuses a larger catalog before download")
    sy.set_defaults(func=_cmd_sync)

    fl = sub.add_parser("flash", help="flash a bundle to a board (A/B slots, verify, health check, switch)")
    fl.add_argument("bundle")
    fl.add_argument("--board", required=True, help="board config name (firmware_configs) or a .toml path")
    fl.add_argument("--to", required=True, help="DIR or ssh://user@host[:port]/path")
    fl.add_argument("--public-key", help="publisher key to trust and pin (default: the bundle's, first flash only)")
    fl.add_argument("--python", help="the target's python (default: the board config's; this one for a DIR)")
    fl.add_argument(
        "--service",
        action="store_true",
        help="also install systemd units: `shelfrank serve` as a service, `shelfrank sync` on a timer",
    )
    fl.add_argument("--unit-dir", metavar="DIR", help="where --service writes the units (default /etc/systemd/system)")
    fl.add_argument(
        "--sync-url",
        metavar="URL",
        help="published catalog the sync timer fetches (default: the board config's sync_url; '' = no timer)",
    )
    fl.add_argument(
        "--install-runtime",
        action="store_true",
        help="make PREFIX/runtime/venv with shelfrank (from --wheelhouse) on the target, health-check with it",
    )
    fl.add_argument(
        "--wheelhouse",
        action="append",
        metavar="DIR",
        help="wheels for --install-runtime: shelfrank's for the target and its dependencies' (repeatable); "
        "copied to the target and installed with --no-index",
    )
    fl.add_argument(
        "--online", action="store_true", help="--install-runtime: pip may also use the board's package index"
    )
    fl.add_argument(
        "--allow-arch-mismatch",
        action="store_true",
        help="flash although the board's expected_isa implies another architecture than the target's "
        "(refused over ssh, warned for a DIR)",
    )
    fl.set_defaults(func=_cmd_flash)

    he = sub.add_parser("health", help="(on the target) verify a bundle, open it, answer one query")
    he.add_argument("bundle")
    he.add_argument("--public-key", required=True)
    _state_option(he, required=True)
    he.add_argument("--board")
    he.set_defaults(func=_cmd_health)

    for name, fn, text in (
        ("status", _cmd_status, "active slot, versions, key id, last sync and flash"),
        ("rollback", _cmd_rollback, "switch current back to the other slot"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("prefix", help="DIR or ssh://user@host[:port]/path")
        sp.add_argument("--python", help="the target's python (ssh targets; default python3)")
        sp.add_argument("--json", action="store_true")
        sp.set_defaults(func=fn)

    sv = sub.add_parser("serve", help="the device runtime as a local JSON-over-HTTP service (docs/serve.md)")
    sv.add_argument("bundle", help="bundle directory or PREFIX/current")
    sv.add_argument("--board", help="board config (threads, onnxruntime providers); reported by /v1/status")
    sv.add_argument("--public-key", help="trusted publisher key (default: state/trusted.pub, else unpinned)")
    _state_option(sv)
    sv.add_argument("--host", default="127.0.0.1", help="TCP address to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8377, help="TCP port (default 8377; 0 picks a free one, printed)")
    sv.add_argument("--unix", metavar="PATH", help="also listen on this Unix socket (mode 0660)")
    sv.add_argument("--no-tcp", action="store_true", help="only the Unix socket (needs --unix)")
    sv.add_argument("--access-log", action="store_true", help="log one line per request (no bodies, no user ids)")
    sv.add_argument("--ui", action="store_true", help="also serve the kiosk page at /ui/ (docs/serve.md)")
    sv.set_defaults(func=_cmd_serve)

    bench = sub.add_parser("bench", help="benchmarks: 'kernel' (top-k kernel only) or a bundle path")
    bench.add_argument("target", help="'kernel', or a bundle path")
    bench.add_argument("--json", metavar="OUT", help="write the results as JSON to OUT")
    bench.add_argument("--md", metavar="OUT", help="write the report as Markdown to OUT")
    bench.add_argument("--quick", action="store_true", help="smaller sweep for a fast look")
    bench.add_argument("--baselines", metavar="DIR", help="the export's BUNDLE.baselines folder (naive pipeline)")
    bench.add_argument("--csv", metavar="OUT", help="write the rows as CSV to OUT (system facts on each line)")
    bench.add_argument(
        "--format", choices=("md", "json", "csv"), default="md", help="what to print on stdout (default md)"
    )
    bench.add_argument("--public-key", help="trusted publisher key for the bundle (default: unpinned)")
    bench.add_argument("--board", help="board config the report compares this machine against")
    bench.add_argument("--plot", metavar="OUT.png", help="latency against catalog size per stage (matplotlib)")
    bench.add_argument("--sizes", type=_int_list, help="comma-separated catalog sizes (default 10000,100000,1000000)")
    bench.add_argument("--threads", type=_int_list, help="comma-separated thread counts (default 1,2)")
    bench.add_argument("--repeats", type=int, default=None, help="timed repetitions per cell")
    bench.add_argument(
        "--real-embeddings",
        metavar="NPY",
        help="float32 (N, d) embeddings for the int8 recall check (default: computed or cached)",
    )
    bench.set_defaults(func=_cmd_bench)
    return p


def _one_line(e: BaseException) -> str:
    """An error as one line: a message may carry a remote command's output over several."""
    return " | ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. Every ``ShelfrankError`` (and an ``OSError``: a path, a permission, a
    full disk) is one ``error: …`` line on stderr and exit status 2, never a traceback; anything
    else is a bug and keeps its traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ShelfrankError, OSError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
