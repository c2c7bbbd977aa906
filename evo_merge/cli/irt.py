"""`evo-merge irt fit|anchors|estimate|validate`: parse arguments, delegate to `evo_merge.irt`.

Only the option tables are imported here; the fitting code (torch, scikit-learn: seconds) is
imported by the command that runs, so `evo-merge --help` lists every command without it."""

from __future__ import annotations

from pathlib import Path

import click

from evo_merge.cli.logs import print_log_lines
from evo_merge.cli.outputs import check_irt_model_folder, check_output_file, write_output_file
from evo_merge.cli.paths import UserPath
from evo_merge.console import results_console
from evo_merge.errors import UserError, naming_file
from evo_merge.irt.kinds import (
    ADAPTIVE,
    ANCHOR_ALLOCATIONS,
    ANCHOR_METHODS,
    BACKEND_NAMES,
    DEFAULT_ANCHOR_BALANCE,
    DEFAULT_ANCHOR_METHOD,
    DEFAULT_ESTIMATOR_KIND,
    ENDPOINT_ESTIMATORS,
    ESTIMATOR_KINDS,
    FEW_HELD_OUT,
    GMPIRT,
    HOLD_OUTS,
    MAX_ANCHOR_BALANCE,
    RANDOM_DRAWS,
    SE_CAVEATS,
    SELECTABLE_ANCHOR_METHODS,
)
from evo_merge.markup import visible


def _auto_or_count(value: str, option: str) -> int | str:
    """`auto`, or a positive whole number (--dims, --folds)."""
    if value == "auto":
        return value
    if not (value.strip().isascii() and value.strip().isdigit() and int(value) >= 1):
        raise UserError(f"{option}: expected 'auto' or a positive integer, not {value!r}")
    return int(value)


def _methods(value: str) -> list[str]:
    """--methods: known anchor method names, comma-separated (checked here, before any fit)."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in ANCHOR_METHODS]
    if not names or unknown:
        raise UserError(f"--methods must name anchor methods from {', '.join(ANCHOR_METHODS)}, not {value!r}")
    return names


def _int_list(value: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise UserError(f"{option} must be a comma-separated list of positive integers, not {value!r}")
    return values


def _delta(value: str) -> float | str:
    if value == "auto":
        return value
    try:
        delta = float(value)
    except ValueError:
        delta = float("nan")
    if not 0.0 <= delta <= 1.0:
        raise UserError(f"--gmp-delta must be 'auto' or a number in [0, 1], not {value!r}")
    return delta


def _endpoints(value: str | None):
    """A response file (full rows of the endpoints) or comma-separated training subject ids."""
    if value is None:
        return None
    if Path(value).suffix.lower() in (".csv", ".parquet", ".pq"):
        from evo_merge.irt import load_responses

        return load_responses(value)
    return [s.strip() for s in value.split(",") if s.strip()]


def _backend_options(backend: str, epochs: int | None, lr: float | None) -> dict[str, float]:
    """--epochs/--lr for the pyirt backend (the torch backend's L-BFGS fit has neither)."""
    options = {"epochs": epochs, "lr": lr}
    given = {k: v for k, v in options.items() if v is not None}
    if given and backend != "pyirt":
        raise UserError(f"--{next(iter(given))} applies to --backend pyirt only")
    return given


def _backend_flags(command):
    """--backend, --epochs and --lr, shared by `fit` and `validate`."""
    command = click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
                           help="Learning rate (pyirt backend; lowered automatically on divergence).")(command)
    command = click.option("--epochs", type=click.IntRange(min=1), default=None,
                           help="Training epochs (pyirt backend).")(command)
    return click.option("--backend", type=click.Choice(BACKEND_NAMES), default="torch", show_default=True,
                        help="IRT fitting backend (pyirt: py-irt, Python < 3.12).")(command)


ITEMS_AS_ROWS = click.option("--items-as-rows", is_flag=True,
                             help="The responses file is wide with one row per item (ids in its first column) and "
                             "one column per subject, as leaderboards often export it.")


def _layout_flags(command):
    """--items-as-rows and --scenarios: how a RESPONSES file is laid out, shared by `fit` and `validate`."""
    command = click.option("--scenarios", "scenarios", type=UserPath(path_type=Path), default=None,
                           help="CSV item,scenario naming each item's scenario (benchmark), for a file without "
                           "a scenario column.")(command)
    return ITEMS_AS_ROWS(command)


@click.group()
def irt() -> None:
    """Fit IRT models on response matrices, choose anchors, estimate accuracies."""
    print_log_lines()  # fallbacks, retries, fit times: one line each on stderr (warnings marked)


@irt.command()
@click.argument("responses", type=UserPath(path_type=Path))
@click.option("--out", "out", required=True, type=UserPath(path_type=Path), help="Model folder to write.")
@click.option("--overwrite", is_flag=True, help="replace the IRT model in --out, and its anchors")
@_layout_flags
@_backend_flags
@click.option("--dims", default="auto", show_default=True, help="'auto' (cross-fitted on held-out subjects) or D.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the fit and of the subjects --dims auto holds out.")
def fit(responses: Path, out: Path, overwrite: bool, items_as_rows: bool, scenarios: Path | None, backend: str,
        epochs: int | None, lr: float | None, dims: str, seed: int) -> None:
    """Fit a multidimensional 2PL on RESPONSES and store it in --out."""
    from evo_merge.cli.progress import StageBars
    from evo_merge.irt import IRTModel, load_responses

    check_irt_model_folder(out, overwrite)  # before the fit's minutes
    # option errors first: not the file's
    options, dims_value = _backend_options(backend, epochs, lr), _auto_or_count(dims, "--dims")
    data = load_responses(responses, items_as_rows=items_as_rows, scenarios=scenarios)
    with naming_file(responses), StageBars() as bars:  # too few subjects, or py-irt diverging on them
        model = IRTModel.fit(data, backend=backend, dims=dims_value, seed=seed, progress=bars, **options)
    try:
        model.save(out, overwrite=overwrite)  # over a model: its anchor sets, chosen on it, are removed
    except FileExistsError as exc:
        if exc.filename != str(out / "model.json"):  # not the model put in place: a path in the way, said as it is
            raise
        raise UserError(f"--out {out}: an IRT model was saved there while this one was fitted (another command?); "
                        "it is left as it is and this fit was not saved (--overwrite replaces it)") from None
    click.echo(f"fitted {backend} model: {len(model.subject_ids)} subjects, {len(model.item_ids)} items, "
               f"{len(model.scenarios)} scenario(s), D={model.dims} -> {out}")


@irt.command()
@click.argument("model_dir", type=UserPath(path_type=Path))
@click.option("--budget", type=click.IntRange(min=1), required=True,
              help="Anchors per scenario (a scenario with fewer items gets them all).")
@click.option("--method", type=click.Choice(ANCHOR_METHODS), default=DEFAULT_ANCHOR_METHOD, show_default=True,
              help="'auto': stratified-irt with enough calibration subjects, stratified below; "
              "'auto-kmeans': kmeans-irt with enough (the default before defaults version 8).")
@click.option("--allocation", type=click.Choice(ANCHOR_ALLOCATIONS), default="equal", show_default=True,
              help="'neyman': as many anchors in all, spread where they cut the error of the overall score most.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the clustering or sampling.")
@click.option("--balance", type=click.IntRange(1, MAX_ANCHOR_BALANCE), default=DEFAULT_ANCHOR_BALANCE,
              show_default=True,
              help="stratified and stratified-irt: draws, the one whose anchors estimate the calibration subjects' "
                   "own scores best kept (1: one draw, as before defaults version 10)")
@click.option("--overwrite", is_flag=True,
              help="replace a stored set of the same method and budget that holds other items (another seed, "
                   "allocation or balance); refused otherwise: subjects scored on it could no longer be estimated")
def anchors(model_dir: Path, budget: int, method: str, allocation: str, seed: int, balance: int,
            overwrite: bool) -> None:
    """Choose --budget anchor items per scenario, store them in MODEL_DIR and print them."""
    from evo_merge.irt import IRTModel, select_anchors

    chosen = select_anchors(IRTModel.load(model_dir), budget, method, seed, allocation, balance=balance)
    path = chosen.save(model_dir, overwrite=overwrite)
    for scenario, items in chosen.items.items():
        click.echo(visible(f"{scenario}: {' '.join(items)}"))  # a received model's names, as text
    click.echo(f"stored {path}", err=True)


@irt.command()
@click.argument("model_dir", type=UserPath(path_type=Path))
@click.option("--responses", "partial", required=True, type=UserPath(path_type=Path), help="Anchor scores (long).")
@click.option("--estimator", type=click.Choice(ESTIMATOR_KINDS), default=DEFAULT_ESTIMATOR_KIND, show_default=True,
              help="adaptive: p-IRT from whatever items each subject was scored on, SE per subject.")
@click.option("--endpoints", default=None, help="Endpoint subject ids (comma-separated) or their full responses file.")
@click.option("--budget", type=click.IntRange(min=1), default=None, help="Which stored anchor set (if several).")
@click.option("--method", type=click.Choice(ANCHOR_METHODS), default=None,
              help="Which stored anchor set (if several); 'auto' as `irt anchors` resolved it.")
@click.option("--gmp-delta", default="auto", show_default=True,
              help="gmpirt anchor weight: 'auto' or a number in [0, 1] (MERGE3 uses 0.5).")
@ITEMS_AS_ROWS
@click.option("--out", type=UserPath(path_type=Path), default=None, help="CSV file (default: stdout).")
@click.option("--overwrite", is_flag=True, help="replace an existing OUT (refused otherwise, before any estimate)")
def estimate(model_dir: Path, partial: Path, estimator: str, endpoints: str | None, budget: int | None,
             method: str | None, gmp_delta: str, items_as_rows: bool, out: Path | None, overwrite: bool) -> None:
    """Estimate per-scenario accuracy of the subjects in --responses: CSV subject,scenario,estimator,estimate,se."""
    from evo_merge.irt import (
        AdaptiveEstimator,
        Estimator,
        IRTModel,
        choose_anchor_method,
        estimate_table,
        load_anchors,
        load_responses,
    )

    if out is not None:
        check_output_file(out, overwrite)
    delta = _delta(gmp_delta)  # an option's mistake before the model is read
    if endpoints is not None and estimator not in ENDPOINT_ESTIMATORS:  # it would be ignored without a word
        raise UserError(f"--endpoints: only {' and '.join(ENDPOINT_ESTIMATORS)} use the endpoints, not --estimator "
                        f"{estimator}")
    if delta != "auto" and estimator != GMPIRT:  # it was ignored without a word
        raise UserError(f"--gmp-delta: only gmpirt mixes its parts at a given weight, not --estimator {estimator}")
    if estimator == ADAPTIVE and (budget is not None or method is not None):  # its items are its own
        raise UserError(f"--{'budget' if budget is not None else 'method'}: names a stored anchor set, which "
                        "--estimator adaptive does not read (it chooses each subject's items itself)")
    model = IRTModel.load(model_dir)
    if method is not None:  # `irt anchors --method auto` stored its set under the method auto resolved to
        method = choose_anchor_method(method, len(model.subject_ids))[0]
    anchors = None if estimator == ADAPTIVE else load_anchors(model_dir, budget, method, model.item_ids)
    est = (AdaptiveEstimator(model) if estimator == ADAPTIVE
           else Estimator(model, anchors, estimator, endpoints=_endpoints(endpoints), gmp_delta=delta))
    with naming_file(partial):  # an item the model lacks, a subject without a scenario's anchors
        responses = load_responses(partial, items_as_rows=items_as_rows)
        table = estimate_table(est, responses)
    outside = ~responses["item"].isin(set(est.anchor_ids)) & responses["score"].notna()
    if estimator != ADAPTIVE and (unused := int(outside.sum())):
        click.echo(f"{partial}: {unused:,} scores of items outside the anchor set were not used (estimators other "
                   "than adaptive read the anchors' scores only; --estimator adaptive uses every item scored)",
                   err=True)
    if estimator in SE_CAVEATS:
        click.echo(f"{estimator} estimates: {SE_CAVEATS[estimator]}", err=True)
    text = table.to_csv(index=False)
    if out is None:
        click.echo(text, nl=False)
    else:
        write_output_file(out, text, overwrite)
        click.echo(f"wrote {out}: {table['subject'].nunique()} subject(s), {estimator} estimates")


@irt.command()
@click.argument("responses", type=UserPath(path_type=Path))
@click.option("--hold-out", type=click.Choice(HOLD_OUTS), default="random", show_default=True,
              help="Which subjects are held out: at random, or the strongest / weakest by mean score (unlike "
              "every training subject, as a campaign's best merges can be).")
@click.option("--test-frac", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.25, show_default=True,
              help="Share of subjects held out (one split; see --folds).")
@click.option("--folds", default="auto", show_default=True,
              help="Hold every subject out once, over this many fits (random hold-out), instead of one split: "
              "with a few dozen subjects one split's verdict rests on a handful. 'auto': one split where it holds "
              f"out {FEW_HELD_OUT} or more, else 1/test-frac folds; 1 with --test-frac, or a --hold-out not random.")
@click.option("--budgets", default="10,20,50,100", show_default=True, help="Anchors per scenario, comma-separated.")
@click.option("--methods", default=",".join(SELECTABLE_ANCHOR_METHODS), show_default=True,
              help="Anchor methods to validate, comma-separated ('auto': the one a campaign would use); random "
              "anchors are always among them. Fewer methods, a faster run.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the held-out split and the anchor draws.")
@_layout_flags
@_backend_flags
@click.option("--dims", default="auto", show_default=True, help="'auto' (cross-fitted on held-out subjects) or D.")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Anchor draws averaged per row (one draw's anchors serve every held-out subject).")
@click.option("--balance", type=click.IntRange(1, MAX_ANCHOR_BALANCE), default=DEFAULT_ANCHOR_BALANCE,
              show_default=True,
              help="Stratified anchors: the best-balanced of this many draws on the training subjects, as a "
              "campaign's (1: one draw, to see what balancing pays on these responses).")
@click.option("--draws", type=click.IntRange(min=1), default=RANDOM_DRAWS, show_default=True,
              help="Random draws per subject behind the baseline (random items + mean).")
@click.option("--endpoints", default=None, help="Training subject ids (comma-separated): adds mp-IRT rows.")
@click.option("--overall", is_flag=True,
              help="Error of the item-weighted mean over the scenarios (a task's score), not of each scenario.")
@click.option("--csv", "csv_path", type=UserPath(path_type=Path), default=None, help="Also write the table as CSV.")
@click.option("--overwrite", is_flag=True, help="replace an existing --csv file (refused otherwise, before any fit)")
@click.pass_context
def validate(ctx: click.Context, responses: Path, hold_out: str, test_frac: float, folds: str, budgets: str,
             methods: str, seed: int, items_as_rows: bool, scenarios: Path | None, backend: str, epochs: int | None,
             lr: float | None, dims: str, repeats: int, balance: int, draws: int, endpoints: str | None,
             overall: bool, csv_path: Path | None, overwrite: bool) -> None:
    """MAE on held-out subjects for every anchor method x estimator x budget (baseline: random + mean)."""
    from evo_merge.cli.irt_validation import default_summary, validation_table
    from evo_merge.cli.progress import StageBars
    from evo_merge.irt import load_responses
    from evo_merge.irt import validate as run_validation
    from evo_merge.irt.validation import auto_folds

    split_given = ctx.get_parameter_source("test_frac") is not click.core.ParameterSource.DEFAULT
    folds = _auto_or_count(folds, "--folds")
    if folds != "auto" and folds > 1 and split_given:
        raise UserError(f"--test-frac and --folds {folds} do not go together: each fold holds out 1/{folds} of "
                        "the subjects")
    if csv_path is not None:
        check_output_file(csv_path, overwrite, "--csv")
    ends = [s.strip() for s in endpoints.split(",") if s.strip()] if endpoints else []
    anchor_methods, budget_list = _methods(methods), list(dict.fromkeys(_int_list(budgets, "--budgets")))
    dims, backend_options = _auto_or_count(dims, "--dims"), _backend_options(backend, epochs, lr)  # before the reading
    with StageBars() as bars:
        data = load_responses(responses, items_as_rows=items_as_rows, scenarios=scenarios)
        # the folds that hold every subject out once: the default's, and the summary's advice after one split
        refold = auto_folds(data, test_frac, ends) if hold_out == "random" else None
        if folds == "auto":
            folds = 1 if split_given or refold is None else refold
        table = run_validation(data, test_frac=test_frac, folds=folds, budgets=budget_list,
                               methods=anchor_methods, seed=seed, backend=backend, dims=dims,
                               repeats=repeats, endpoints=ends, overall=overall, draws=draws, hold_out=hold_out,
                               balance=balance, progress=bars, **backend_options)
    console = results_console(width=140)  # the table is about 135 wide: never folded
    console.print(validation_table(table, hold_out))
    if summary := default_summary(table, overall, refold):
        console.print(summary, soft_wrap=True)
    if balance != DEFAULT_ANCHOR_BALANCE:  # the rows are not what a campaign's default would score
        drawn = "one draw" if balance == 1 else f"the best-balanced of {balance} draws"
        console.print(f"stratified anchors here: {drawn} per anchor set (--balance); a campaign's are the "
                      f"best-balanced of {DEFAULT_ANCHOR_BALANCE}", soft_wrap=True)
    if csv_path is not None:
        write_output_file(csv_path, table.to_csv(index=False), overwrite, "--csv")
