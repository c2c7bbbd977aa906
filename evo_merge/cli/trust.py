"""`--trust-tasks`: the user's word that the task code a run folder's own campaign names may run
(`search.trust` says why a folder needs it: one received from someone else would run theirs)."""

from __future__ import annotations

from pathlib import Path

import click

from evo_merge.search.layout import EVALUATIONS_CSV, PARETO_CSV
from evo_merge.search.run_folder import STARTED_FILES
from evo_merge.user_paths import expand_home

TRUST_TASKS = click.option(
    "--trust-tasks", is_flag=True,
    help="run the task code (plugins, lm-eval task files) the run folder's campaign.yaml names, in a folder "
    "not run by you here (a folder received from someone else runs none of it unless you say so); "
    "`run`, `resume` and `export` then mark the folder as yours, and it needs no word again (`plan` writes "
    "nothing into a run folder)")

# what only a run folder holds: a campaign.yaml beside one of them is a run folder's own (a project
# folder may hold its campaign beside `models/` or a report of its own)
RUN_ENTRIES = (*sorted(STARTED_FILES), EVALUATIONS_CSV, PARETO_CSV)


def run_folder_of(campaign_file: Path, out: Path | None = None) -> Path | None:
    """The run folder whose own campaign file `campaign_file` is: the folder `out` itself, or one
    that holds a run's entries (its database may have been left out of a folder someone sent),
    whatever the file's name: a received folder could ship its campaign again as `Campaign.yaml`
    or `use-this.yaml` beside a `pareto.csv`, and the check went by the name (audit 95). A project
    folder holding a run's table is one too, its code checked (`check_tasks_trusted` says why
    and the way out, where no run's records are there to hold a mark)."""
    folder = expand_home(campaign_file).parent
    if out is not None and folder.resolve() == expand_home(out).resolve() and out.is_dir():
        return folder
    if any((folder / entry).exists() for entry in RUN_ENTRIES):
        return folder
    return None


def check_tasks_trusted(campaign_file: Path, run: Path, trust_tasks: bool, *, resuming: bool = False) -> None:
    """Refuse to run the task code that `campaign_file`, run folder `run`'s own, names
    (`trust.code_task`) where the folder was not run here and the user did not say `--trust-tasks`.
    The tasks are read as the run resolves them, against the file's folder, as they were marked.

    `resuming` (resume, export): the folder is opened as those commands open it, so an edited
    campaign.yaml is refused as edited, which running no code tells, before it is taken for someone
    else's. Otherwise (a new run of the folder's campaign) an edit is allowed, and an edit of the
    tasks is named as the reason no mark can cover them."""
    from evo_merge.config import Campaign
    from evo_merge.errors import UserError, naming_file
    from evo_merge.search.binding import open_records, open_run, tasks_changed
    from evo_merge.search.layout import CAMPAIGN_FILE
    from evo_merge.search.store import CampaignStore
    from evo_merge.search.trust import code_task, is_trusted
    from evo_merge.search.workspace import resolve_campaign

    if trust_tasks:
        return
    with naming_file(campaign_file):
        campaign = Campaign.load(campaign_file)
    campaign = resolve_campaign(campaign, campaign_file.parent)  # as the run recorded it: task paths absolute
    tasks = campaign.tasks
    if (code := code_task(tasks)) is None:
        return
    if not resuming and not any((run / name).exists() for name in (CAMPAIGN_FILE, CampaignStore.DB)):
        # a run's files, but neither its campaign nor its records: no mark of the user's can be there
        held = next((entry for entry in RUN_ENTRIES if (run / entry).exists()), None)
        if held is not None:
            raise UserError(f"{campaign_file}: tasks.{code[0]} runs {code[1]}, and the file lies in a folder holding "
                            f"a campaign run's {held} but not the run's records, so no mark of yours covers it (a "
                            "folder someone sent, or a run's tables copied beside your campaigns); a run folder "
                            "does not choose what code runs: read the file, then pass --trust-tasks")
    store = (open_run if resuming else open_records)(run)
    try:
        if is_trusted(store, tasks):
            return
        edited = tasks_changed(store, campaign)
    finally:
        store.close()
    why = ("this run folder's campaign.yaml names other tasks than the folder ran, and a mark covers only the tasks "
           "a folder ran with" if edited else
           "this run folder was not run by you here (it does not carry your key's mark: received, or from before "
           f"evo-merge marked them{_no_key()})")
    raise UserError(f"{campaign_file}: tasks.{code[0]} runs {code[1]}, and {why}; a run folder does not choose what "
                    "code runs: read its campaign.yaml, then pass --trust-tasks")


def _no_key() -> str:
    """Where the user holds no key: the run that bound their own folder could not keep one (a
    read-only or missing home), which its warning said then."""
    from evo_merge.search.trust import key_file

    try:
        path = key_file()
        return "" if path.exists() else f", or your key could not be kept at {path} when it ran"
    except OSError:
        return ", or no key of yours could be kept when it ran (no home folder)"
