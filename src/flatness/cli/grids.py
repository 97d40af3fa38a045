"""The command line's grid commands: ``sweep``, ``sweep-status`` and ``publish``."""

from __future__ import annotations

import os
from pathlib import Path

from flatness.cli import options
from flatness.errors import FlatnessError

GRID_HELP = "a chapter (logreg, mlp, cnn, resnets, adaptive, rank, spectra, measures, predict, "
GRID_HELP += "verdicts, estimators), all, or a YAML file of points; publish also takes computations"


def add_parsers(sub) -> None:
    sweep = sub.add_parser("sweep", help="train a grid's missing runs, here or on Slurm")
    sweep.add_argument("grid", metavar="GRID", help=GRID_HELP)
    options.profile_option(sweep, "paper")
    sweep.add_argument("--executor", choices=("local", "slurm"), default="local")
    sweep.add_argument(
        "--max-parallel",
        type=int,
        help="local: worker processes (default one per GPU, else per core); "
        "slurm: jobs running at once",
    )
    sweep.add_argument("--partition", help="Slurm partition")
    sweep.add_argument("--gpus-per-job", type=int, default=1, help="GPUs per Slurm job")
    sweep.add_argument(
        "--time-min", type=int, default=72 * 60, help="Slurm time limit per job, in minutes"
    )
    sweep.add_argument(
        "--cluster",
        choices=("slurm", "local", "debug"),
        help="submitit's cluster for --executor slurm (local, debug: the same path on this "
        "machine, for testing)",
    )
    sweep.add_argument("--wait", action="store_true", help="slurm: wait for every job")
    sweep.add_argument("--retry-failed", action="store_true", help="train failed points again")
    sweep.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    sweep.add_argument("--step-times", help="step times measured on a GPU (plan's JSON)")
    options.store_options(sweep)

    status = sub.add_parser("sweep-status", help="done / running / failed / missing per point")
    status.add_argument("grid", metavar="GRID", help=GRID_HELP)
    options.profile_option(status, "paper")
    status.add_argument(
        "--retry-failed",
        action="store_true",
        help="clear the failed points' records, so that the next sweep trains them",
    )
    options.store_options(status)

    publish = sub.add_parser(
        "publish", help="copy a grid's stored runs and cached computations into published/"
    )
    publish.add_argument("grid", metavar="GRID", help=GRID_HELP)
    options.profile_option(publish, "paper")
    publish.add_argument(
        "--to",
        help="the published folder to write: the same as --published, which may be given "
        "instead (both, naming different folders, are refused); needed for a profile other "
        "than paper, as the default folder is committed with the paper's runs",
    )
    publish.add_argument(
        "--allow-collapsed",
        action="store_true",
        help="publish runs that learnt nothing (final training loss at least 0.95 ln K, K "
        "classes), which publish otherwise refuses: both runs that predict every class alike "
        "(loss about ln K) and runs that diverged (loss far above ln K)",
    )
    publish.add_argument(
        "--without-weights",
        action="store_true",
        help="leave every run's weights out (its metrics, series and test predictions are "
        "published): for large grids whose pages read no weights; a run published already is "
        "left as it is, so publishing it again without this flag adds no weights",
    )
    options.store_options(publish)


def _hours(estimates) -> str:
    return f"{sum(e.hours for e in estimates):.3g}"


def run(args) -> bool:
    """Handle a grid command; ``False`` if ``args`` is not one."""
    handlers = {"sweep": _sweep, "sweep-status": _status, "publish": _publish}
    if args.command not in handlers:
        return False
    handlers[args.command](args)
    return True


def _sweep(args) -> None:
    from flatness.chapters import grids
    from flatness.results import sweep

    grid = grids.load(args.grid, args.profile)
    store, published = options.layers(args)
    if args.max_parallel is not None and args.max_parallel < 1:
        raise FlatnessError(f"--max-parallel must be at least 1, got {args.max_parallel}")
    points = sweep.to_train(grid, store, published, retry_failed=args.retry_failed)
    reasons = {}
    if points:
        # an unusable store is one message up front (a dry run says so as the sweep would)
        store.check_writable()
        # points the sweep refuses (data not readable here, a train_size beyond the data) are
        # not to train, and the dry run's count of runs below leaves them out too
        reasons = sweep.refused([p.config for p in points], args.data_root)
    print(
        f"grid {grid.name} at profile {args.profile}: {len(grid)} point(s), "
        f"{len(points) - len(reasons)} to train"
        + (f", {len(reasons)} refused" if reasons else "")
        + f"; store: {store.root}"
    )
    if args.dry_run:
        _dry_run(grid, points, reasons, store, published, args)
        return
    refusal = sweep.refusal(reasons, [p.config for p in points])
    if refusal:
        raise FlatnessError(refusal)  # as sweep.sweep would; it is told not to read the data again
    if not points:
        problems = _skipped_problems(grid, store, published, args)
        if problems:
            raise FlatnessError("\n".join(problems))
        return
    outcome = sweep.sweep(
        grid,
        executor=args.executor,
        store=store,
        published=published,
        data_root=args.data_root,
        max_parallel=args.max_parallel,
        retry_failed=args.retry_failed,
        partition=args.partition,
        gpus_per_job=args.gpus_per_job,
        time_min=args.time_min,
        cluster=args.cluster,
        wait=args.executor == "local" or args.wait or args.cluster in ("local", "debug"),
        progress=True,
        checked=True,
    )
    if outcome.jobs and not outcome.count("done") and not outcome.count("failed"):
        ids = ", ".join(str(j.job_id) for j in outcome.jobs[:3])
        print(
            f"submitted {len(outcome.jobs)} job(s) ({ids} ...); follow them with "
            f"`python -m flatness sweep-status {args.grid} --profile {args.profile}`"
        )
        return
    elsewhere, errors = outcome.count("elsewhere"), outcome.count("error")
    print(
        f"{outcome.count('done')} trained or found, {outcome.count('failed')} failed, "
        + (f"{errors} raised an error, " if errors else "")
        + f"{outcome.count('skipped')} skipped"
        + (f", {elsewhere} being trained by another process" if elsewhere else "")
        + f", in {outcome.seconds:.0f} s"
    )
    problems = []
    failed = {k: m for k, m in outcome.messages.items() if outcome.states[k] == "failed"}
    if failed:
        problems.append(
            f"{len(failed)} point(s) failed (recorded; `sweep --retry-failed` trains them "
            "again):\n" + "\n".join(f"  {k}: {m}" for k, m in failed.items())
        )
    raised = {k: m for k, m in outcome.messages.items() if outcome.states[k] == "error"}
    if raised:
        problems.append(
            f"{len(raised)} point(s) raised an error (not recorded; each point's log under "
            f"{store.root / '.logs'} or the job's output holds the traceback; the same sweep "
            "again tries them again):\n" + "\n".join(f"  {k}: {m}" for k, m in raised.items())
        )
    cut = {k: m for k, m in outcome.messages.items() if outcome.states[k] == "interrupted"}
    if cut:
        problems.append(
            f"{len(cut)} point(s) interrupted (their worker died; the same sweep again resumes "
            "them):\n" + "\n".join(f"  {k}: {m}" for k, m in cut.items())
        )
    # a point that failed in this sweep is reported once, above, not as skipped too
    problems += _skipped_problems(
        grid, store, published, args, reported=set(failed) | set(raised) | set(cut)
    )
    if problems:
        raise FlatnessError("\n".join(problems))


def _dry_run(grid, points, reasons, store, published, args) -> None:
    """Print what the sweep would train, with estimated hours; then refuse, as the sweep
    would, points it refuses (``reasons``, from :func:`flatness.results.sweep.refused`: data not
    readable here, a ``train_size`` beyond the data) and name the failed or damaged points it
    would skip, with the sweep's exit code."""
    from flatness.results import plan, sweep

    configs = [p.config for p in points if p.config.key() not in reasons]
    if args.step_times:
        import torch

        known = plan.read_step_times(args.step_times)
        estimates, _ = plan.estimate(configs, torch.device("cpu"), known)
        source = f"step times from {args.step_times}"
    else:
        estimates = plan.gpu_estimate(configs)
        source = _assumption()
    for e in estimates:
        c = e.config
        size = f"{c.train_size:,} examples" if c.train_size else "all examples"
        print(f"  {c.key()}  {c.label():52} {c.epochs:4d} epochs, {size:15} {e.hours:8.3g} GPU-h")
    print(f"{len(estimates)} run(s), {_hours(estimates)} GPU-hours ({source})")
    refusal = sweep.refusal(reasons, [p.config for p in points])
    if refusal:
        # the sweep itself would train none of them
        raise FlatnessError(f"{refusal}\n(a dry run: the sweep would stop here)")
    problems = _skipped_problems(grid, store, published, args)
    if problems:
        raise FlatnessError("\n".join(problems) + "\n(a dry run: nothing was trained)")


def _skipped_problems(grid, store, published, args, reported=frozenset()) -> list[str]:
    """Failed or damaged points this sweep left alone (without --retry-failed); the keys in
    ``reported`` (points that failed in this sweep, reported as such) are left out."""
    from flatness.results import sweep

    if args.retry_failed:
        return []
    left = [
        p
        for p in sweep.status(grid, store, published)
        if p.state in ("failed", "damaged") and p.config.key() not in reported
    ]
    if not left:
        return []
    return [
        f"{len(left)} failed or damaged point(s) skipped (`--retry-failed` trains them again):\n"
        + "\n".join(f"  {p.config.key()}  {p.state}: {p.message}" for p in left)
    ]


def _assumption() -> str:
    from flatness.results import plan

    return (
        f"estimated from counted FLOPs at an assumed {plan.ASSUMED_GPU_FLOPS / 1e12:g} TFLOP/s "
        f"and {plan.ASSUMED_SECONDS_PER_OP * 1e6:g} us per operator; measure with "
        "`flatness plan --save-step-times` on a GPU and pass --step-times"
    )


def _status(args) -> None:
    from flatness.chapters import grids
    from flatness.results import sweep

    grid = grids.load(args.grid, args.profile)
    store, published = options.layers(args)
    options.check_store_exists(store, args)
    if args.retry_failed:
        store.check_writable()
    points = sweep.status(grid, store, published)
    if args.retry_failed:
        for p in points:
            if p.state in ("failed", "damaged"):
                store.discard(store.path(p.config))
        points = sweep.status(grid, store, published)
    # a missing point the sweep would refuse says so, as the sweep (and its dry run) would; each
    # reason (a missing data set's names its files) is printed once, after the points
    reasons = sweep.refused([p.config for p in points if p.state == "missing"], args.data_root)
    numbers = {reason: n for n, reason in enumerate(dict.fromkeys(reasons.values()), 1)}
    points = [
        sweep.PointStatus(
            p.config, p.state, f"the sweep refuses it (reason {numbers[reasons[p.config.key()]]})"
        )
        if p.config.key() in reasons
        else p
        for p in points
    ]
    counts = {s: sum(p.state == s for p in points) for s in sweep.STATES}
    print(
        f"grid {grid.name} at profile {args.profile}: {len(points)} point(s): "
        + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    )
    for p in points:
        line = f"  {p.config.key()}  {p.state:9} {p.config.label()}"
        print(line + (f"\n      {p.message}" if p.message else ""))
    if reasons:
        print(f"the sweep refuses {len(reasons)} missing point(s), training none of the grid:")
        for reason, n in numbers.items():
            print(f"  reason {n}: {reason}")
    if args.retry_failed:
        print(
            f"failed points cleared; train them with `python -m flatness sweep {args.grid} "
            f"--profile {args.profile}{_layer_options(args)}`"
        )


def _layer_options(args) -> str:
    """The store and layer options the user gave, for commands this one suggests."""
    out = ""
    for option in ("results", "published", "data_root"):
        value = getattr(args, option, None)
        if value:
            out += f" --{option.replace('_', '-')} {value}"
    return out


def _publish(args) -> None:
    from flatness.chapters import grids
    from flatness.results import published, sweep

    if args.to and args.published and not _same(args.to, args.published):
        raise FlatnessError(
            f"--to {args.to} and --published {args.published} name different folders; both "
            "name the published folder publish writes, so give one of them"
        )
    if args.profile != "paper" and not (
        args.to or args.published or os.environ.get(published.PUBLISHED_ENV)
    ):
        # the default layer is committed with the book, whose paper-profile pages read it
        default = published.published_root() or "<checkout>/published"
        raise FlatnessError(
            f"publish --profile {args.profile}: the default published folder {default} holds "
            f"the paper profile's runs only; to publish {args.profile}-profile runs give --to "
            f"FOLDER (or --published FOLDER, or ${published.PUBLISHED_ENV})"
        )
    store, layer = options.layers(args)
    if args.to:
        layer = published.Published(Path(args.to))
    options.check_store_exists(store, args)
    if args.grid == COMPUTATIONS:
        _publish_computations(store, layer, args.profile)
        return
    grid = grids.load(args.grid, args.profile)
    runs = [r for r in (store.load(c) for c in grid.configs) if r is not None]
    # a damaged published copy is written again
    written = published.publish(
        runs, layer, allow_collapsed=args.allow_collapsed, weights=not args.without_weights
    )
    have = {r.key for r in runs}
    missing = [
        p
        for p in sweep.status(grid, store, layer)
        if p.config.key() not in have and p.state != "published"
    ]
    print(
        f"published {len(written)} run(s) of grid {grid.name} into {layer.root}; "
        f"{len(runs) - len(written)} were published already; {len(missing)} neither stored "
        "here nor published"
    )
    for p in missing:
        print(f"  {p.config.key()}  {p.state:9} {p.config.label()}")
    _publish_computations(store, layer, args.profile, None if args.grid == "all" else args.grid)


#: publish's GRID that names every stored computation of the profile
COMPUTATIONS = "computations"


def _publish_computations(store, layer, profile: str, chapter: str | None = None) -> None:
    """Publish the store's computations of ``profile`` (those of ``chapter`` alone, where
    given) beside the runs; says how many, and names damaged ones, which are not published.
    Computations made by code that has changed since are not published, and published ones of
    the same profile and chapter are withdrawn: no call can ask for their keys again."""
    from flatness.results import computations

    def wanted(c) -> bool:
        return c.inputs.get("profile") == profile and (
            chapter is None or c.name.startswith(f"{chapter}.")
        )

    found, damaged = computations.stored(store.root)
    chosen = [c for c in found if wanted(c)]
    if not chosen and chapter is not None:
        return  # a chapter without computations: its runs were the whole publish
    current = [c for c in chosen if c.current()]
    written = computations.publish(current, layer.root)
    print(
        f"published {len(written)} computation(s) of profile {profile} into "
        f"{computations.published_folder(layer.root)}; {len(current) - len(written)} were "
        "published already"
    )
    for c in chosen:
        if c not in current:
            print(f"  not published, computed by code changed since: {c.path.name}")
    for path, reason in damaged:
        print(f"  not published, damaged: {path.name} ({reason})")
    old = [c for c in computations.published_entries(layer.root)[0] if wanted(c)]
    stale = [c for c in old if not c.current()]
    computations.withdraw(stale, layer.root)
    for c in stale:
        print(
            f"  withdrawn from the published layer, computed by code changed since: {c.path.name}"
        )


def _same(a: str, b: str) -> bool:
    """Whether the paths ``a`` and ``b`` name one folder (resolved, as far as they exist)."""
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
