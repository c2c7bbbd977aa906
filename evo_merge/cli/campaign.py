"""`evo-merge run | resume | status | report | export`: search campaigns in a run folder.

`status` and `report` read the run's store only (its facts: tasks, directions, item counts),
so they open no model and no task; `status` imports neither torch nor lm-eval (`report` imports
torch through the candidate kinds, whose notes it prints, and pymoo through the front's pooling).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from evo_merge.cli.paths import UserPath
from evo_merge.cli.push import PRIVATE, REVISION
from evo_merge.cli.trust import TRUST_TASKS, check_tasks_trusted, run_folder_of
from evo_merge.markup import shell, visible
from evo_merge.user_paths import expand_home

if TYPE_CHECKING:
    from evo_merge.config import Campaign
    from evo_merge.search.campaign import CampaignRunner
    from evo_merge.search.store import CampaignStore, Evaluation

RUN_DIR = click.argument("run", type=UserPath(path_type=Path))


def _campaign_file(run: Path) -> Path:
    """The campaign.yaml of an existing run folder (one with its database: resuming a folder whose
    database is gone would start the campaign over in it)."""
    from evo_merge.search.layout import CAMPAIGN_FILE
    from evo_merge.search.run_folder import check_run_files

    check_run_files(run)
    return run / CAMPAIGN_FILE


SCHEDULER = click.option(
    "--scheduler", metavar="ADDRESS|local",
    help="evaluate on the dask scheduler at ADDRESS (tcp://host:8786), or in this process (local): a run "
    "folder's own campaign.yaml cannot send its work to a scheduler")


TRACKING = click.option(
    "--tracking/--no-tracking", default=None,
    help="report to the trackers the run folder's campaign.yaml names (or not): a folder cannot send its "
    "results, and your tracking credentials, to a server it names unless you say so")


SCORE_CACHE = click.option(
    "--score-cache/--no-score-cache", default=None,
    help="read and write the score cache the run folder's campaign.yaml names (or not): a folder cannot choose "
    "the file its resume writes into and takes measurements from unless you say so (a run you started, or "
    "resumed with --score-cache, needs no word again)")


def _runner(run: Path, campaign_file: Path | None = None, scheduler: str | None = None,
            tracking: bool | None = False, score_cache: bool | None = None, folder: Path | None = None):
    """The runner of a run folder: with `campaign_file`, the user's campaign (`run`); else the
    folder's own, which names no scheduler to connect to (`_evaluated_where`), reports to its
    trackers only as `tracking` says (`_tracked_where`; False for commands that track nothing) and
    uses its score cache as `score_cache` says (`_cached_where`). A `campaign_file` that is the run
    folder `folder`'s own (`run RUN/campaign.yaml --out ...`) is held to the same rules, the user's
    word being the folder's marks alone (`run` takes no such options). The task code it names is
    the caller's to check first (`check_tasks_trusted`)."""
    from evo_merge.config import Campaign
    from evo_merge.errors import naming_file
    from evo_merge.search.campaign import CampaignRunner

    if campaign_file is None:  # the folder's own file: an edit of it is named as such (`open_run`)
        from evo_merge.search.binding import open_run

        open_run(run).close()
        folder, words = run, _Words()
    else:  # `run`: a run folder's own file is used by the folder's marks alone
        tracking = score_cache = None
        words = _Words("resume the folder with", ", or run a copy of the file, once read, from outside the folder")
    campaign_file = campaign_file or _campaign_file(run)
    with naming_file(campaign_file):
        campaign = Campaign.load(campaign_file)
    if folder is not None:
        campaign = _evaluated_where(campaign, campaign_file, scheduler, words)
        campaign = _tracked_where(campaign, campaign_file, tracking, words)
        campaign = _cached_where(campaign, campaign_file, score_cache, words)
    with naming_file(campaign_file):  # the tasks and models it names, resolved as the runner opens
        return CampaignRunner.open(campaign, campaign_file.parent, run, lock=False)  # the command holds the lock


@dataclass(frozen=True)
class _Words:
    """How a refusal asks for the user's word: `resume` and `export` take it as options ("pass
    --tracking"); `run` of a run folder's own campaign.yaml takes none, so it names the command that
    does, and the way around it (a file read and copied out is the user's own)."""

    verb: str = "pass"
    otherwise: str = ""

    def ask(self, option: str, alternative: str = "") -> str:
        return f"{self.verb} {option}{alternative}{self.otherwise}"


def _evaluated_where(campaign: Campaign, campaign_file: Path, scheduler: str | None,
                     words: _Words = _Words()) -> Campaign:
    """The campaign evaluated where `--scheduler` says. A run folder may come from someone else, and a
    dask scheduler runs what it is given and answers in pickles: so the address a folder's own
    campaign.yaml names is used only when the user names it too."""
    from pydantic import ValidationError

    from evo_merge.config import EvaluatorSpec
    from evo_merge.errors import UserError, message_line
    from evo_merge.schema import validator_message

    named = campaign.evaluator.address
    if scheduler is None:
        if named is not None:
            raise UserError(f"{campaign_file}: evaluator.address sends this run's work to the dask scheduler at "
                            f"{named}; a run folder does not choose where its work goes: "
                            + words.ask(f"--scheduler {named}", " to connect to it (or --scheduler local)"))
        return campaign
    where = {"kind": "local", "address": None} if scheduler == "local" else {"kind": "dask", "address": scheduler}
    if where["kind"] == "dask" and campaign.evaluator.score_cache is not None:  # not part of the run: left here
        logging.getLogger(__name__).warning(
            "evaluator.score_cache serves local evaluation only: this run goes on the cluster without it")
        where["score_cache"] = None
    try:  # the file's other settings kept (`sequence_tokens` sizes the memory plan)
        evaluator = EvaluatorSpec.model_validate({**campaign.evaluator.model_dump(), **where, "n_workers": None})
    except ValidationError as error:
        raise UserError(f"--scheduler: {message_line(validator_message(error.errors()[0]))}") from None
    return campaign.model_copy(update={"evaluator": evaluator})


def _tracked_where(campaign: Campaign, campaign_file: Path, tracking: bool | None,
                   words: _Words = _Words()) -> Campaign:
    """The campaign with the trackers `--tracking` allows. A run folder may come from someone else:
    a tracking server it names (an MLflow URI, W&B online under its entity) would get the run's
    results and the user's credentials (MLflow sends its token to any URI), and a file store
    would be written where the folder says, so it is used only when the user says so: with
    `--tracking`, or by having started the run or resumed it with `--tracking` (the folder carries
    the user's mark, `trust.mark_tracking`). Trackers that go where the user's own environment says
    (no `uri`: MLFLOW_TRACKING_URI; W&B offline) need no word."""
    from evo_merge.errors import UserError
    from evo_merge.search.trust import tracking_trusted

    spec = campaign.tracking
    if spec is None or tracking is True:
        return campaign
    if tracking is False:
        return campaign.model_copy(update={"tracking": None})
    named = ([f"MLflow at {spec.mlflow.uri}"] if spec.mlflow is not None and spec.mlflow.uri is not None else []) + (
        [f"W&B project {spec.wandb.project}" + (f" of {spec.wandb.entity}" if spec.wandb.entity else "")]
        if spec.wandb is not None and spec.wandb.mode == "online" else [])
    if not named:
        return campaign
    if _marked(campaign_file.parent, lambda store: tracking_trusted(store, spec)):  # the user's own, by their word
        return campaign
    raise UserError(f"{campaign_file}: tracking reports this run's results to {' and '.join(named)}, and this run "
                    "folder does not carry your word for it (not started, or resumed with --tracking, by you here); a "
                    "run folder does not choose where its results go: "
                    + words.ask("--tracking", " to report there, or --no-tracking"))


def _cached_where(campaign: Campaign, campaign_file: Path, score_cache: bool | None,
                  words: _Words = _Words()) -> Campaign:
    """The campaign with the score cache `--score-cache` allows. A run folder may come from someone
    else, and the cache its campaign.yaml names is a file the resume writes into and reads scores
    from as its own measurements (another user's cache, a file made where the folder says). So it is
    used where the user says so, or where the folder carries their mark (`trust.mark_score_cache`);
    otherwise the run goes on without it, saying so: its results are the same, only slower."""
    from evo_merge.search.trust import score_cache_trusted
    from evo_merge.search.workspace import absolute_path

    named = campaign.evaluator.score_cache
    if named is None or score_cache is True:
        return campaign
    if score_cache is None:
        path = absolute_path(named, campaign_file.parent)
        if _marked(campaign_file.parent, lambda store: score_cache_trusted(store, path)):
            return campaign
        logging.getLogger(__name__).warning(
            "%s: evaluator.score_cache names %s, and this run folder does not carry your word for it (not started, "
            "or resumed with --score-cache, by you here); this run goes on without it: %s", campaign_file, named,
            words.ask("--score-cache", " to read and write that file"))
    return campaign.model_copy(update={"evaluator": campaign.evaluator.model_copy(update={"score_cache": None})})


def _marked(folder: Path, carries: Callable[[CampaignStore], bool]) -> bool:
    """Whether run folder `folder`'s records carry the user's mark (`carries`); a folder holding no
    records (a run's tables copied, its database left out) carries none."""
    from evo_merge.search.binding import open_records
    from evo_merge.search.store import CampaignStore

    if not (folder / CampaignStore.DB).exists():
        return False
    store = open_records(folder)
    try:
        return carries(store)
    finally:
        store.close()


def _summary_table(runner: CampaignRunner, picks: dict[str, Evaluation]):
    """The endpoints and each pick (name -> its evaluation), their scores side by side."""
    from rich.table import Table

    from evo_merge.search.candidate import reference_candidates
    from evo_merge.search.holdout import held_out_scores

    names, store = runner.objectives.names, runner.workspace.store
    with_holdout = any(runner.holdout.values())
    table = Table(title="endpoints vs chosen merges (estimated / measured on the search items"
                  + (" / measured on the held-out items)" if with_holdout else ")"))
    table.add_column("model")
    for task in names:
        table.add_column(task, justify="right")

    def cells(e, estimated: bool):
        """Each task's scores in the title's order; a baseline, measured, has no estimate ('-')."""
        held = held_out_scores(store, e.key, runner.holdout) or {}
        scores = [(e.estimates or {}) if estimated else {}, e.measured or {}] + ([held] if with_holdout else [])
        return [" / ".join(f"{s[t]:.3f}" if t in s else "-" for s in scores) for t in names]

    for label, candidate in reference_candidates(runner.workspace.endpoint_labels()):
        e = store.get(candidate.key)
        if e is not None and e.measured:
            # an endpoint's folder named with a newline forged a row (audit 118)
            table.add_row(visible(runner.workspace.base_label() if label == "base" else label), *cells(e, False))
    for name, e in picks.items():
        table.add_row(visible(f"{name} ({e.method})"), *cells(e, True))
    return table


def _run(runner: CampaignRunner) -> None:
    from evo_merge.cli.progress import StageBars
    from evo_merge.console import results_console
    from evo_merge.report.campaign import write_report
    from evo_merge.report.tracking import follow_campaign
    from evo_merge.search.metrics import picks_no_better_than_inputs
    from evo_merge.search.store import FACTS_META

    workspace, store = runner.workspace, runner.workspace.store
    tracker = follow_campaign(runner)  # before any evaluation: a missing package stops nothing paid for
    written: list[Path] = []

    def report(picks: dict[str, tuple[int, Path]]) -> None:
        written.append(write_report(workspace.run_dir, store, store.get_meta(FACTS_META), picks))

    if runner.finished():  # the replay's bars run through in an instant: not work being done again
        click.echo(f"{workspace.run_dir}: this campaign is finished; nothing is evaluated again (its picks are "
                   "checked, the report rewritten)", err=True)
    with StageBars() as bars:
        runner.progress = bars
        measured, exported = runner.run(report)
    # trackers last: they observe a run that is already complete; what they have not logged yet
    # (measurements, the baselines, estimates refined since their generation)
    tracker.log_evaluations(store.evaluations())
    tracker.finish(workspace.run_dir)
    console = results_console(soft_wrap=True)  # a path printed is one line, for a script reading it
    by_id = {m.id: m for m in measured}
    picks = {name: by_id[eid] for name, (eid, _) in exported.items()}  # exported picks are measured candidates
    console.print(_summary_table(runner, picks))
    for line in picks_no_better_than_inputs(store, store.get_meta(FACTS_META), runner.objectives, picks):
        console.print(line)
    console.print(f"report: {written[0]}")
    for name, (_, folder) in exported.items():
        console.print(f"model {name}: {folder}")


@click.command()
@click.argument("campaign_file", metavar="CAMPAIGN.yaml", type=UserPath(path_type=Path))
@click.option("--out", required=True, type=UserPath(path_type=Path),
              help="run folder (created; a run of the same campaign in it is resumed)")
@TRUST_TASKS
def run(campaign_file: Path, out: Path, trust_tasks: bool) -> None:
    """Start a search campaign in the run folder OUT (an existing run of the same campaign is resumed)."""
    start_campaign(campaign_file, out, trust_tasks)


def start_campaign(campaign_file: Path, out: Path, trust_tasks: bool = False) -> None:
    """`run` (and `demo`): the memory plan and the folder checked first, then the campaign run under
    the folder's lock; a start that fails leaves no folder. A campaign file that is a run folder's
    own (`run RUN/campaign.yaml --out RUN`, which an edited folder is told to use) is checked as
    `resume` checks that folder's: it is the folder's code."""
    from evo_merge.search.preflight import check_campaign_fits
    from evo_merge.search.run_folder import check_run_folder, remove_unused_run_folder

    check_run_folder(out)  # links and foreign folders refused before the plan reads a store in it
    if (folder := run_folder_of(campaign_file, out)) is not None:  # its scheduler, trackers and cache: by marks alone
        check_tasks_trusted(campaign_file, folder, trust_tasks)
    check_campaign_fits(campaign_file, out)  # memory plan (#13): exit 2 before the run folder or any evaluation
    new = not out.exists()
    with _holding(out):
        try:
            with _runner(out, campaign_file, folder=folder) as runner:  # its database closed however the run ends
                _run(runner)
        except (Exception, KeyboardInterrupt):
            if new:  # a failed or interrupted start leaves no folder bound to its config
                remove_unused_run_folder(out)
            raise


@click.command()
@RUN_DIR
@SCHEDULER
@TRACKING
@SCORE_CACHE
@TRUST_TASKS
def resume(run: Path, scheduler: str | None, tracking: bool | None, score_cache: bool | None,
           trust_tasks: bool) -> None:
    """Continue an interrupted campaign: replays the search from the stored evaluations, evaluating
    only what is missing."""
    from evo_merge.config import Campaign
    from evo_merge.errors import naming_file
    from evo_merge.search.preflight import check_campaign_fits

    campaign_file = _campaign_file(run)
    # before a refusal names `plan`, which builds them
    check_tasks_trusted(campaign_file, run, trust_tasks, resuming=True)
    with naming_file(campaign_file):
        evaluator = _evaluated_where(Campaign.load(campaign_file), campaign_file, scheduler).evaluator
    check_campaign_fits(campaign_file, run, evaluator)  # memory plan (#13) of where it runs, as for `run`
    with _holding(run):
        with _runner(run, scheduler=scheduler, tracking=tracking, score_cache=score_cache) as runner:
            _run(runner)


@contextmanager
def _holding(run: Path, again: str | None = None) -> Iterator[None]:
    """The run folder's lock for the whole command; Ctrl-C ends with 130 and the way to go on (`again`:
    the command itself, where `resume` would not do what it was doing: an `export --pick`)."""
    from evo_merge.cli.faults import stopped
    from evo_merge.search.lock import RunLock
    from evo_merge.search.store import CampaignStore

    with RunLock(run):
        try:
            yield
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (`faults.Terminated`)
            if not (run / CampaignStore.DB).exists():  # removed: nothing had been evaluated
                raise stopped(exc, " before the first evaluation; nothing kept") from None
            raise stopped(exc, "; " + (again or "resume with: " + shell("evo-merge", "resume", run))) from None


@click.command()
@RUN_DIR
def status(run: Path) -> None:
    """Generation (and, while a run works, how far calibration is or the time the search has left),
    evaluations, best estimates, the picks as measured and item evaluations spent."""
    from evo_merge.console import results_console
    from evo_merge.report.status import status_lines
    from evo_merge.search.binding import read_run
    from evo_merge.search.lock import holder

    store, facts = read_run(run)
    with store:
        console = results_console(soft_wrap=True)  # a line is one line in a pipe, for grep
        for line in status_lines(run, store, facts, holder(run)):
            console.print(line)


@click.command()
@RUN_DIR
def report(run: Path) -> None:
    """(Re)write report.md, report.html, evaluations.csv, pareto.csv and the plots of a run."""
    from evo_merge.search.layout import EVALUATIONS_CSV, PARETO_CSV, REPORT_HTML

    report_file, running, finished = _write_report(run)
    if not finished and _moved_on(run, running):
        # a run finished (or stopped) while the snapshot was written, perhaps after its own final report:
        # that one had been replaced by a snapshot saying the run was not finished (audits 112, 114)
        report_file, running, _ = _write_report(run)
    now = f" (a run is working in the folder, pid {running}: they are of this moment)" if running else ""
    click.echo(f"wrote {report_file}, {REPORT_HTML}, {EVALUATIONS_CSV}, {PARETO_CSV} and the plots in {run}{now}")


def _write_report(run: Path) -> tuple[Path, str | None, bool]:
    """The run's report files, the pid of the run working in the folder (None: none is, or it has
    finished), and whether it had finished. Takes no lock: `status` and a `resume` would take
    `report` for a working run."""
    from evo_merge.report.campaign import write_report
    from evo_merge.search.binding import read_run
    from evo_merge.search.lock import holder
    from evo_merge.search.run_folder import in_run

    store, facts = read_run(run)
    with store:
        exported = {  # picks exported by `run` / `resume` into this folder (older runs stored absolute paths)
            name: (eid, run / folder)
            for name, (eid, folder) in store.exported().items()
            if (run / folder).is_dir() and not Path(in_run(run / folder, run)).is_absolute()
        }
        finished = store.finished(facts["generations"])
        running = None if finished else holder(run)
        return write_report(run, store, facts, exported, finished, running=running), running, finished


def _moved_on(run: Path, running: str | None) -> bool:
    """Whether the run has finished since an unfinished report was written, or the run then working
    in the folder has let it go (a `resume` may have started and finished meanwhile, or a run ended)."""
    from evo_merge.search.binding import read_run
    from evo_merge.search.lock import holder

    if running is not None and holder(run) is None:
        return True
    store, facts = read_run(run)
    with store:
        return store.finished(facts["generations"])


@click.command()
@RUN_DIR
@click.option("--pick", "pick", required=True, metavar="ID|NAME",
              help="evaluation id (the id column of evaluations.csv), or the name of one of the run's picks "
                   "(best-arith, balanced, ...: `evo-merge status` lists them with their ids)")
@click.option("--out", required=True, type=UserPath(path_type=Path), help="model folder to write")
@click.option("--overwrite", is_flag=True, help="replace OUT if it is a model folder (once the new one is complete)")
@click.option("--push-to-hub", "repo_id", metavar="ORG/NAME", help="upload the exported folder to this Hub repo")
@PRIVATE
@REVISION
@click.option("--dry-run", is_flag=True, help="list what --push-to-hub would upload; upload nothing")
@SCHEDULER
@SCORE_CACHE
@TRUST_TASKS
def export(
    run: Path,
    pick: str,
    out: Path,
    overwrite: bool,
    repo_id: str | None,
    private: bool,
    revision: str | None,
    dry_run: bool,
    scheduler: str | None,
    score_cache: bool | None,
    trust_tasks: bool,
) -> None:
    """Export one evaluated candidate of a run as a model folder (merged from the checkpoints by its
    recipe), and push it to the Hugging Face Hub with --push-to-hub. A candidate not yet scored on
    every item (held-out ones included) is measured first and the result stored, so the card and
    `evo-merge report` show its measured scores."""
    from evo_merge.cli.outputs import check_outside_run
    from evo_merge.cli.progress import StageBars
    from evo_merge.errors import UserError
    from evo_merge.report.status import measured_on, measured_scores
    from evo_merge.report.upload import check_repo_id, check_revision, hub_token
    from evo_merge.weights.export import check_output_folder

    if repo_id is not None:
        check_repo_id(repo_id)  # before the export's minutes, not after
        check_revision(revision)
        if not dry_run:  # a retry once logged in found the folder written and needed --overwrite
            hub_token()
    elif private or revision or dry_run:
        raise UserError("--private, --revision and --dry-run go with --push-to-hub ORG/NAME")
    # before the lock, which would create a mistyped folder
    check_tasks_trusted(_campaign_file(run), run, trust_tasks, resuming=True)
    check_outside_run(out, run, "its picks in models/, which `resume` restores")  # its records would name another
    check_output_folder(expand_home(out), overwrite)  # before measuring, not after
    with _holding(run, again="run the export again to finish it"):
        with _runner(run, scheduler=scheduler, score_cache=score_cache) as runner:
            store = runner.workspace.store
            eid = _pick_id(pick, store.exported(), run)
            spent = store.items_evaluated(measured=True)
            with StageBars() as bars:  # measuring and the file merge take minutes at size
                runner.progress = bars
                measured, folder = runner.export_evaluation(eid, out, overwrite=overwrite)
            scores, newly_measured = measured_scores(store, measured), store.items_evaluated(measured=True) != spent
            measured_where = measured_on(store)
    click.echo(visible(f"wrote {folder}: evaluation {eid} ({measured.method}), {measured_where}: {scores}"))
    if newly_measured:  # its held-out items alone, too: the report's to rewrite
        click.echo(f"evaluation {eid} was measured for this export: `{shell('evo-merge', 'report', run)}` adds it to "
                   "report.md and evaluations.csv")
    if repo_id is not None:
        from evo_merge.cli.push import push_folder

        push_folder(folder, repo_id, private=private, revision=revision, dry_run=dry_run)


def _pick_id(pick: str, picks: dict[str, tuple[int, str]], run: Path) -> int:
    """`--pick`: an evaluation id, or a pick's name (its evaluation, as the run stored it when it
    exported the picks into models/): the docs call the exported folders picks by those names."""
    from evo_merge.errors import UserError
    from evo_merge.search.layout import EVALUATIONS_CSV

    number = pick.strip()
    if number.isascii() and number.isdigit():  # '²' is a digit to str.isdigit, not to int()
        if pick in picks and picks[pick][0] != int(number):  # a pick named "7" (`final.picks`) is not evaluation 7
            raise UserError(f"--pick {pick}: both the name of a pick of this run (evaluation {picks[pick][0]}) and "
                            f"an evaluation id; give the id ({picks[pick][0]} or {int(number)}) you mean")
        return int(number)
    if pick in picks:
        return picks[pick][0]
    named = ", ".join(f"{name} ({eid})" for name, (eid, _) in picks.items())
    held = f"this run's picks: {named}" if named else "this run has no picks yet (they come when it finishes)"
    raise UserError(f"--pick {pick}: neither an evaluation id (the id column of {run / EVALUATIONS_CSV}) nor a "
                    f"pick of this run; {held}")
