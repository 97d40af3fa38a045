"""``python -m flatness``: train runs, list the store, execute chapters, build the book.

Bad input (an unknown profile, model, data set, chapter or parameter; a wrong type; missing
data offline) prints one message and exits with code 2, leaving the store untouched.
A failing chapter prints its name and traceback and exits with code 1.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from flatness.config import PROFILES, RunConfig, get_profile
from flatness.data import DATASETS
from flatness.errors import FlatnessError
from flatness.models import MODELS


def _parameters(pairs: list[list[str]] | None) -> dict:
    # values are read as YAML, so "-p seeds '[0, 1]'" gives a list and "-p epochs 5" an int
    return {key: yaml.safe_load(value) for key, value in pairs or []}


def _execution_options(parser: argparse.ArgumentParser, out_help: str) -> None:
    parser.add_argument("--profile", choices=list(PROFILES), default="cpu")
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        metavar=("KEY", "VALUE"),
        help="override a chapter parameter (VALUE is read as YAML); repeatable",
    )
    parser.add_argument("--out", help=out_help)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flatness", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", help="train runs (cached in the results store) and print their metrics"
    )
    run.add_argument("model", choices=sorted(MODELS))
    run.add_argument("--profile", choices=list(PROFILES), default="cpu")
    run.add_argument("--wd", type=float, nargs="+", help="weight decays (default: the profile's)")
    run.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the profile's)")
    run.add_argument("--dataset", choices=DATASETS, help="data set (default: the profile's)")
    run.add_argument("--epochs", type=int, help="epochs (default: the profile's)")
    run.add_argument("--data-root", help="where MNIST-style data live ($FLATNESS_DATA)")
    run.add_argument("--results", help="the results store's folder ($FLATNESS_RESULTS)")
    run.add_argument("--device", help="torch device (default: cuda if available, else cpu)")

    ls = sub.add_parser("ls", help="list the stored runs")
    ls.add_argument("--results", help="the results store's folder ($FLATNESS_RESULTS)")

    chapter = sub.add_parser("chapter", help="execute one chapter with papermill")
    chapter.add_argument("name", help="chapter name, e.g. logreg")
    _execution_options(chapter, "folder to hold _build/executed (default: the checkout)")
    book = sub.add_parser("book", help="execute every chapter and render the HTML book")
    _execution_options(book, "folder to hold _build (default: the checkout)")
    return parser


def _run(args) -> None:
    from flatness.store import Store, load_or_run

    settings = get_profile(args.profile).logreg.with_overrides(
        dataset=args.dataset, seeds=args.seeds, weight_decays=args.wd, epochs=args.epochs
    )
    configs = settings.run_configs(args.model)
    store = Store(args.results)
    print(f"{len(configs)} run(s) of {args.model} on {settings.dataset}; store: {store.root}")
    print(
        f"{'key':16}  {'wd':>8} {'seed':>4} {'test acc':>8} {'lambda_max':>10} {'trace':>10} {'||w||':>8}"
    )
    for cfg in configs:
        run = load_or_run(
            cfg, store=store, data_root=args.data_root, device=args.device, progress=True
        )
        m = run.metrics
        print(
            f"{run.key:16}  {cfg.weight_decay:8g} {cfg.seed:4d} {m['test_acc']:8.4f} "
            f"{m['lambda_max']:10.4g} {m['trace']:10.4g} {m['weight_norm']:8.3f}"
        )


def _ls(args) -> None:
    from flatness.store import Store

    store = Store(args.results)
    runs = store.runs()
    print(f"{len(runs)} run(s) in {store.root}")
    if runs:
        print(
            f"{'key':16}  {'model':8} {'dataset':13} {'wd':>8} {'seed':>4} {'epochs':>6} "
            f"{'test acc':>8} {'lambda_max':>10} {'finished':25}"
        )
    for r in runs:
        c: RunConfig = r.config
        print(
            f"{r.key:16}  {c.model:8} {c.dataset:13} {c.weight_decay:8g} {c.seed:4d} {c.epochs:6d} "
            f"{r.metrics.get('test_acc', float('nan')):8.4f} "
            f"{r.metrics.get('lambda_max', float('nan')):10.4g} {r.provenance.get('finished', '')}"
        )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from flatness import book

    try:
        if args.command == "run":
            _run(args)
        elif args.command == "ls":
            _ls(args)
        elif args.command == "chapter":
            done = book.execute_chapter(
                args.name,
                profile=args.profile,
                parameters=_parameters(args.parameter),
                out=args.out,
            )
            if done.error:
                print(done.error, file=sys.stderr)
                print(f"the partly executed notebook: {done.notebook}", file=sys.stderr)
                return 1
            print(done.notebook)
        elif args.command == "book":
            index = book.build_book(
                profile=args.profile, parameters=_parameters(args.parameter), out=args.out
            )
            print(index)
    except FlatnessError as err:
        print(f"flatness: error: {err}", file=sys.stderr)
        return 2
    except book.ChapterError as err:
        print(f"flatness: {err}", file=sys.stderr)
        return 1
    return 0
