"""``python -m flatness``: train runs, list the store, execute chapters, build the book.

Bad input (an unknown profile, model, data set, chapter, option or parameter; a wrong type;
missing data offline) prints one message and exits with code 2, leaving the store untouched.
A failing chapter prints its name and traceback and exits with code 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import os
import re
import sys
from pathlib import Path

import yaml

from flatness.chapters import logreg as logreg_chapter
from flatness.cli import grids as cli_grids
from flatness.cli import options
from flatness.errors import FlatnessError, RunDiverged, unknown
from flatness.profiles import get_profile
from flatness.training.config import RunConfig
from flatness.training.recipes import RECIPES, run_config
from flatness.validation import strict_loader, yaml_number


def parse_value(key: str, text: str):
    """A ``-p KEY VALUE`` value read as YAML, with ``1e-2``-style numbers read as numbers."""
    try:
        return yaml_number(yaml.load(text, Loader=strict_loader()))
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0]
        raise FlatnessError(f"-p {key}: cannot read {text!r} ({first})") from None


def _parameters(pairs: list[list[str]] | None) -> dict:
    # values are read as YAML, so "-p seeds '[0, 1]'" gives a list and "-p epochs 5" an int
    return {key: parse_value(key, value) for key, value in pairs or []}


def _parameter_option(parser: argparse.ArgumentParser, key: str, help: str) -> None:
    parser.add_argument(
        "-p", "--parameter", nargs=2, action="append", metavar=(key, "VALUE"), help=help
    )


def _execution_options(parser: argparse.ArgumentParser, out_help: str) -> None:
    # -p and -y read values as papermill's -p and -y do, so both documented routes agree
    options.profile_option(parser, "cpu")
    _parameter_option(
        parser,
        "KEY",
        "set a chapter parameter, read as papermill -p reads it (a number, True, False, None, "
        "else text); repeatable",
    )
    parser.add_argument(
        "-y",
        "--parameters-yaml",
        action="append",
        metavar="YAML",
        help="chapter parameters as YAML, e.g. -y 'seeds: [0, 1]' (as papermill -y); repeatable",
    )
    parser.add_argument(
        "--data-root", help="where torchvision data sets live (the data_root parameter)"
    )
    parser.add_argument("--results", help="the results store's folder ($FLATNESS_RESULTS)")
    parser.add_argument("--out", help=out_help)
    parser.add_argument(
        "--train-missing",
        action="store_true",
        help="train the runs that are neither published nor stored (without it only the smoke "
        "and cpu profiles train)",
    )


#: the options that name a file or folder, by ``args`` attribute: what they name, and what
#: leaving them out means. An empty one is refused: read as a path it is the working directory,
#: read as unset the default, and either is a guess. (An empty $FLATNESS_RESULTS, $FLATNESS_DATA
#: or $FLATNESS_PUBLISHED still counts as unset, as :mod:`flatness.paths` reads them.)
PATH_OPTIONS = {
    "results": ("a folder", "$FLATNESS_RESULTS, else <checkout>/results"),
    "published": ("a folder", "$FLATNESS_PUBLISHED, else <checkout>/published"),
    "to": ("a folder", "--published, else $FLATNESS_PUBLISHED, else <checkout>/published"),
    "data_root": ("a folder", "$FLATNESS_DATA, else <checkout>/data"),
    "out": ("a folder", "the checkout"),
    "step_times": ("a JSON file", "none"),
    "save_step_times": ("a JSON file", "none"),
}


def check_paths_given(args: argparse.Namespace) -> None:
    """Refuse, before anything is read or written, a path option given an empty (or blank)
    value, e.g. ``--results ""`` from an unset shell variable.

    Raises:
        FlatnessError: naming the option and the fix.
    """
    for dest, (what, default) in PATH_OPTIONS.items():
        value = getattr(args, dest, None)
        if isinstance(value, str) and not value.strip():
            option = "--" + dest.replace("_", "-")
            raise FlatnessError(
                f"{option} is empty; give {what}, or leave {option} out (default: {default})"
            )


def _chapter_parameters(args) -> dict:
    """The chapter parameters of ``chapter``/``book``; ``--results`` goes to the kernels' env."""
    from flatness.book import build as book
    from flatness.paths import RESULTS_ENV

    # chapters write _build under --out; a store may be read only (nothing to train)
    options.check_folder("--results", args.results)
    options.check_folder("--out", args.out, write=True)
    options.check_folder("--data-root", args.data_root)
    parameters = book.read_parameters(args.parameter, args.parameters_yaml)
    if args.data_root is not None:
        if "data_root" in parameters:
            raise FlatnessError("-p data_root and --data-root both given; use one of them")
        parameters["data_root"] = args.data_root
    if args.results is not None:
        # chapters open the store named by the environment, which their kernels inherit
        os.environ[RESULTS_ENV] = str(Path(args.results).expanduser().resolve())
    return parameters


#: a negative number in any notation float() reads, scientific included
NEGATIVE_NUMBER = re.compile(r"^-(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are the command line's one line ``flatness: error:``
    (exit code 2, as for all bad input), naming the subcommand; abbreviated options are refused.

    Subparsers are made of this class too (``add_subparsers`` uses the parent's class).
    """

    def __init__(self, *args, **kwargs):
        # an abbreviation would take --epoch for --epochs silently, and a later option with the
        # same prefix would change what an old command line means
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        # "-p epochs -1e-3" is a value, as papermill reads it: argparse takes only -5 and -.5
        # for negative numbers, and anything else that starts with "-" for an option
        self._negative_number_matcher = NEGATIVE_NUMBER

    def error(self, message: str):
        # raised, not printed: main reports it as every FlatnessError, and tests calling main
        # get the exit code back rather than a SystemExit
        command = self.prog.removeprefix("flatness").split()  # "flatness run" names run
        where = f"{' '.join(command)}: " if command else ""
        help_line = " ".join(["python -m flatness", *command, "--help"])
        raise FlatnessError(f"{where}{' '.join(message.split())}; see `{help_line}`")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="flatness", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", help="train runs (cached in the results store) and print their metrics"
    )
    run.add_argument("model", help="a model name, e.g. logreg, mlp-10-100, preresnet-110")
    run.add_argument(
        "--optimiser", "--optimizer", default="sgd", help=f"one of {', '.join(RECIPES)}"
    )
    options.profile_option(run, "cpu")
    run.add_argument("--wd", type=float, nargs="+", help="weight decays (default: the recipe's)")
    run.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the profile's)")
    run.add_argument("--dataset", help="data set (default: the profile's)")
    run.add_argument("--epochs", type=int, help="epochs (default: the profile's)")
    _parameter_option(
        run, "FIELD", "set any run field (lr, width, batch_size, hessian_every ...); repeatable"
    )
    run.add_argument("--data-root", help="where torchvision data sets live ($FLATNESS_DATA)")
    run.add_argument("--results", help="the results store's folder ($FLATNESS_RESULTS)")
    run.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    run.add_argument("--retrain", action="store_true", help="retrain damaged or failed runs")
    run.add_argument("--compile", action="store_true", help="train through torch.compile")

    plan = sub.add_parser("plan", help="list a profile's grid of runs with estimated device hours")
    plan.add_argument(
        "grid",
        nargs="?",
        metavar="GRID",
        help="a chapter, all, or a YAML file (default: the paper's networks and optimisers)",
    )
    options.profile_option(plan, "paper")
    plan.add_argument("--device", help="where steps are timed (default: cuda if available)")
    plan.add_argument("--step-times", help="JSON of step times saved by an earlier plan")
    plan.add_argument("--save-step-times", help="write the measured step times here (JSON)")
    # the grid commands' options, so that one command line can go from plan to sweep to publish
    options.store_options(plan)

    ls = sub.add_parser("ls", help="list the stored runs")
    ls.add_argument("--results", help="the results store's folder ($FLATNESS_RESULTS)")

    chapter = sub.add_parser("chapter", help="execute one chapter with papermill")
    chapter.add_argument("name", help="chapter name, e.g. logreg")
    _execution_options(chapter, "folder to hold _build/executed (default: the checkout)")
    book = sub.add_parser("book", help="execute every chapter and render the HTML book")
    _execution_options(book, "folder to hold _build (default: the checkout)")
    book.add_argument(
        "--best-evidence",
        action="store_true",
        help="each chapter at the largest profile it can show without training (paper where "
        "its runs or computations are published and the data can be read, else --profile); "
        "the book readers see online",
    )
    book.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="chapters executed at once, each in its own kernel sharing the cores (default: "
        "one per core, at most 4)",
    )
    book.add_argument(
        "--rerun",
        action="store_true",
        help="execute every chapter even where an executed notebook with the same source, "
        "code, parameters and results store can be reused",
    )
    cli_grids.add_parsers(sub)
    return parser


#: the run fields ``run -p`` sets (the model and optimiser have their own arguments)
RUN_FIELDS = tuple(
    f.name for f in dataclasses.fields(RunConfig) if f.name not in ("model", "optimiser")
)


def _one_or_list(overrides: dict, field: str, option: str, listed):
    """``listed`` (from ``option``), or ``[overrides.pop(field)]``; both at once is bad input."""
    if field not in overrides:
        return listed
    if listed is not None:
        raise FlatnessError(f"-p {field} and {option} both given; use one of them")
    return [overrides.pop(field)]


def _run(args) -> None:
    from flatness.results.published import Published
    from flatness.results.runs import load_or_run
    from flatness.results.store import Store
    from flatness.training import loop as training
    from flatness.training.loop import resolve_device

    device = resolve_device(args.device)
    overrides = _parameters(args.parameter)
    for field, where in (("model", "the MODEL argument"), ("optimiser", "--optimiser")):
        if field in overrides:
            raise FlatnessError(f"-p {field}: set the {field} with {where}, not -p")
    for field in overrides:
        if field not in RUN_FIELDS:
            raise unknown("run setting", field, RUN_FIELDS)
    options.check_folder("--data-root", args.data_root)
    if args.dataset is not None:
        overrides["dataset"] = args.dataset
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    # -p seed / -p weight_decay name one value of what --seeds / --wd list
    seeds = _one_or_list(overrides, "seed", "--seeds", args.seeds)
    if seeds is None:
        seeds = logreg_chapter.settings(args.profile).seeds if args.model == "logreg" else (0,)
    decays = _one_or_list(overrides, "weight_decay", "--wd", args.wd)
    if decays is None and args.model == "logreg" and args.optimiser == "sgd":
        decays = logreg_chapter.settings(args.profile).weight_decays
    configs = [
        run_config(args.model, args.optimiser, args.profile, weight_decay=wd, seed=s, **overrides)
        for wd in (decays or [None])
        for s in seeds
    ]
    store = Store(args.results)
    layer = Published.default()  # what load_or_run reads first
    from flatness.results import sweep

    if any(
        sweep.trains(sweep.point_status(c, store, layer).state, retry_failed=args.retrain)
        for c in configs
    ):
        # an unusable store is one message up front, not one per run
        store.check_writable()
    first = configs[0]
    # missing data is bad input: say so before the store is touched
    from flatness import data as datasets

    datasets.load(first.dataset, data_root=args.data_root, train_size=first.train_size)
    print(
        f"{len(configs)} run(s) of {args.model} with {args.optimiser} on {first.dataset}; "
        f"store: {store.root}"
    )
    print(
        f"{'key':16}  {'wd':>8} {'seed':>4} {'test acc':>8} {'lambda_max':>10} {'trace':>10} "
        f"{'||w||':>8}"
    )
    problems: list[tuple[bool, str]] = []  # (diverged now, message), one per run without result
    learnt_nothing = []  # (run, what its loss says), one per run that learnt nothing
    for cfg in configs:
        try:
            run = load_or_run(
                cfg,
                store=store,
                data_root=args.data_root,
                device=device,
                progress=get_profile(args.profile).progress,
                retrain=args.retrain,
                train_fn=functools.partial(training.train, compile=True) if args.compile else None,
            )
        except FlatnessError as err:
            # a diverged run is that run's result, a failed or damaged one in the store that
            # run's problem: the others of the grid still train
            diverged = isinstance(err, RunDiverged)
            what = "diverged (recorded)" if diverged else "refused (see below)"
            print(f"{cfg.key():16}  {cfg.weight_decay:8g} {cfg.seed:4d}  {what}")
            problems.append((diverged, str(err)))
            continue
        m = {k: _metric(run.metrics, k) for k in ("test_acc", "lambda_max", "trace", "weight_norm")}
        print(
            f"{run.key:16}  {cfg.weight_decay:8g} {cfg.seed:4d} {m['test_acc']:8.4f} "
            f"{m['lambda_max']:10.4g} {m['trace']:10.4g} {m['weight_norm']:8.3g}"
        )
        if reason := _collapse(run):
            learnt_nothing.append((run, reason))
    sys.stdout.flush()  # the table first, then its warnings (on stderr, so the table parses)
    for run, reason in learnt_nothing:
        # its row looks like any other; a network that learnt nothing is no result to report
        print(
            f"flatness: warning: {run.key} ({run.config.label()}) learnt nothing: {reason}; "
            "`python -m flatness publish` refuses it (without --allow-collapsed)",
            file=sys.stderr,
        )
    if problems:
        head = (
            "diverged and are recorded as failed"
            if all(diverged for diverged, _ in problems)
            else "gave no result (diverged, failed before, or damaged in the store)"
        )
        raise FlatnessError(
            f"{len(problems)} of {len(configs)} run(s) {head}:\n"
            + "\n".join(f"  {message}" for _, message in problems)
        )


def _collapse(run) -> str:
    """What :func:`flatness.results.published.collapse_reason` says of ``run`` where it learnt nothing
    (its final training loss is about or above ln K, so publish refuses it), else ``""``."""
    from flatness.results import published

    try:
        if published.collapsed(run):
            return published.collapse_reason(run)
    except (FlatnessError, TypeError, ValueError):
        # a metrics.json edited by hand, or a data set this installation does not know: the
        # listing still shows the run, unjudged
        pass
    return ""


def _metric(metrics: dict, name: str) -> float:
    """``metrics[name]`` as a float; NaN where it is absent or not a number (a run trained
    by another ``train_fn``, or a metrics.json edited by hand)."""
    value = metrics.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return float("nan")
    return float(value)


def _plan(args) -> None:
    from flatness.results import plan, sweep
    from flatness.training import recipes
    from flatness.training.loop import resolve_device

    device = resolve_device(args.device)
    save = Path(args.save_step_times) if args.save_step_times else None
    if save is not None and not save.parent.is_dir():
        # say so before the steps are timed, not after
        raise FlatnessError(f"--save-step-times: the folder {save.parent} does not exist")
    known = plan.read_step_times(args.step_times) if args.step_times else None
    if args.grid is not None:
        from flatness.chapters import grids

        configs = list(grids.load(args.grid, args.profile).configs)
    else:
        configs = recipes.grid(args.profile)
    # plan reads no data; --data-root is checked as the grid commands check it
    store, layer = options.layers(args)
    states = [sweep.point_status(c, store, layer).state for c in configs]
    load = os.getloadavg()[0]  # before timing: plan's own steps would count otherwise
    estimates, times = plan.estimate(configs, device, known)
    # a plan is often made before the store exists (as is a sweep's dry run), so a missing
    # store is said, not refused: every run is then missing
    note = "" if store.root.is_dir() else " (no such folder yet: nothing stored there)"
    where = layer.root if layer.root is not None else "none"
    print(f"store: {store.root}{note}; published: {where}")
    print(plan.table(estimates, device, states))
    busy = plan.busy_note(load, len(os.sched_getaffinity(0)), device) if known is None else ""
    if busy:  # times read from --step-times were not taken here
        print(f"flatness: warning: {busy}", file=sys.stderr)
    if save is not None:
        try:
            save.write_text(json.dumps(times, indent=2))
        except OSError as err:
            raise FlatnessError(f"--save-step-times: cannot write {save} ({err})") from None


def _ls(args) -> None:
    from flatness.results.store import Store, describe_store

    store = Store(args.results)
    options.check_store_exists(store, args)
    runs = store.runs()
    print(f"{len(runs)} run(s) in {store.root}")
    if runs:
        print(
            f"{'key':16}  {'model':14} {'optimiser':9} {'dataset':13} {'lr':>7} {'wd':>7} "
            f"{'seed':>4} {'epochs':>6} {'test acc':>8} {'lambda_max':>10} {'finished':25}"
        )
    learnt_nothing = 0
    for r in runs:
        c: RunConfig = r.config
        opt = c.optimiser + ("+avg" if c.averaging else "")
        finished = str(r.provenance.get("finished", ""))
        reason = _collapse(r)
        if reason:
            learnt_nothing += 1
            finished = f"{finished:25}  collapsed: {reason}"
        print(
            f"{r.key:16}  {c.model:14} {opt:9} {c.dataset:13} {c.lr:7g} {c.weight_decay:7g} "
            f"{c.seed:4d} {c.epochs:6d} {_metric(r.metrics, 'test_acc'):8.4f} "
            f"{_metric(r.metrics, 'lambda_max'):10.4g} {finished}"
        )
    if learnt_nothing:
        print(
            f"{learnt_nothing} run(s) marked collapsed learnt nothing (a final training loss "
            "about or above ln K, K classes): `python -m flatness publish` refuses them "
            "(without --allow-collapsed)"
        )
    extra = describe_store(store)
    if extra:
        print(extra)
    _ls_computations(store.root)


def _ls_computations(root) -> None:
    """The store's cached chapter computations (:mod:`flatness.results.computations`)."""
    from flatness.results import computations

    found, damaged = computations.stored(root)
    if not found and not damaged:
        return
    print(f"{len(found)} computation(s) in {computations.store_folder(root)}")
    for c in found:
        seconds = float(c.provenance.get("seconds", float("nan")))
        stale = "" if c.current() else "  stale: computed by code changed since"
        print(
            f"{c.key:16}  {c.name:34} {str(c.inputs.get('profile', '')):7} "
            f"{seconds:9.1f}s {c.provenance.get('finished', '')}{stale}"
        )
    for path, reason in damaged:
        print(f"damaged: {path.name} ({reason}); the next use computes it again")


#: the exit code after Ctrl-C, as a shell reports a process that SIGINT ended
INTERRUPTED = 130


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse leaves a subcommand's unknown options to the top-level parser, whose message
        # would point at the top-level usage rather than the subcommand's options
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        command = sub.choices[args.command]
        # abbreviations are refused, so a near miss (--epoch) names the option it resembles
        spelled = [o for a in command._actions for o in a.option_strings if o.startswith("--")]
        near = [
            match
            for arg in extra
            if arg.startswith("--")
            for match in difflib.get_close_matches(arg.split("=")[0], spelled, n=1)
        ]
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        command.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parse(argv)
    except FlatnessError as err:
        print(f"flatness: error: {err}", file=sys.stderr)
        return 2
    from flatness.book import build as book

    try:
        check_paths_given(args)
        if cli_grids.run(args):
            pass
        elif args.command == "run":
            _run(args)
        elif args.command == "plan":
            _plan(args)
        elif args.command == "ls":
            _ls(args)
        elif args.command == "chapter":
            done = book.execute_chapter(
                args.name,
                profile=args.profile,
                parameters=_chapter_parameters(args),
                out=args.out,
                train_missing=args.train_missing or None,
            )
            if done.error:
                print(done.error, file=sys.stderr)
                print(f"the partly executed notebook: {done.notebook}", file=sys.stderr)
                return 1
            print(done.notebook)
        elif args.command == "book":
            # its last line on stderr names index.html
            book.build_book(
                profile=args.profile,
                parameters=_chapter_parameters(args),
                out=args.out,
                rerun=args.rerun,
                train_missing=args.train_missing or None,
                best_evidence=args.best_evidence,
                jobs=args.jobs if args.jobs is not None else book.default_jobs(),
            )
        sys.stdout.flush()  # a closed pipe is then reported here, not at exit
    except BrokenPipeError:
        # the reader (e.g. `| head`) stopped reading; silence the flush at exit too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except FlatnessError as err:
        print(f"flatness: error: {err}", file=sys.stderr)
        return 2
    except book.ChapterError as err:
        print(f"flatness: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # the store's writes are atomic and a checkpoint is renamed into place whole, so what
        # is on disk is whole; a chapter's kernel is shut down by the executor on the way out
        print(
            "flatness: interrupted; a run being trained resumes from its last checkpoint when "
            "it is asked for again",
            file=sys.stderr,
            flush=True,
        )
        return INTERRUPTED
    return 0
