"""`evo-merge push`: upload a model folder evo-merge wrote (a run's pick, a `merge` output, an
export) to the Hugging Face Hub, after the checks `report.upload` makes."""

from __future__ import annotations

from pathlib import Path

import click

from evo_merge.cli.paths import UserPath

# `push` and `export --push-to-hub`
PRIVATE = click.option("--private", is_flag=True, help="create the Hub repo private (without it a new repo takes its "
                       "owner's default visibility); an existing public repo is refused, not published to")
REVISION = click.option("--revision", help="Hub branch to upload to (created if missing)")


@click.command()
@click.argument("folder", type=UserPath(path_type=Path))
@click.argument("repo_id", metavar="ORG/NAME")
@PRIVATE
@REVISION
@click.option("--dry-run", is_flag=True, help="list what would be uploaded; upload nothing")
def push(folder: Path, repo_id: str, private: bool, revision: str | None, dry_run: bool) -> None:
    """Upload FOLDER, a model folder evo-merge wrote (a run's models/PICK, a `merge` or `export`
    output), to the Hub repo ORG/NAME (NAME alone: your own namespace)."""
    from evo_merge.errors import UserError
    from evo_merge.report.upload import check_repo_id, check_revision, hub_token

    check_repo_id(repo_id, "ORG/NAME")
    check_revision(revision)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder{_shared_pick(folder)}")
    if not dry_run:
        hub_token()  # before the checks' seconds: said first
    push_folder(folder, repo_id, private=private, revision=revision, dry_run=dry_run)


def _shared_pick(folder: Path) -> str:
    """Where a run exported the pick `folder` names, when it is in another pick's folder (one
    candidate chosen as both `balanced` and `best-arith` is exported once, under the first name):
    said, where "no such folder" left the user to find it."""
    from evo_merge.errors import UserError
    from evo_merge.search.binding import open_records
    from evo_merge.search.layout import MODELS_FOLDER
    from evo_merge.search.store import CampaignStore

    folder = folder.absolute()  # `push balanced` from inside models/
    run = folder.parent.parent
    if folder.parent.name != MODELS_FOLDER or not (run / CampaignStore.DB).is_file():
        return ""
    try:
        store = open_records(run)
    except UserError:  # not a run folder after all: the plain answer
        return ""
    try:
        exported = store.exported()
    except UserError:  # a damaged record: the plain answer, not its repair
        return ""
    finally:
        store.close()
    if folder.name not in exported:
        return ""
    # where the run wrote it, in this run folder (older runs recorded absolute paths: the folder may have moved)
    where = run / MODELS_FOLDER / Path(exported[folder.name][1]).name
    if where == folder or not where.is_dir():  # the pick's own folder, deleted since: nothing else to push
        return ""
    return f"; the run exported pick {folder.name} in {where} (the same candidate as another pick): push that folder"


def push_folder(folder: Path, repo_id: str, *, private: bool, revision: str | None, dry_run: bool) -> None:
    """Check and upload `folder` (`report.upload.plan_upload`), or list what would go (`dry_run`)."""
    from huggingface_hub import get_token

    from evo_merge.report.upload import LOGIN_HINT, plan_upload, push_to_hub

    plan = plan_upload(folder)
    for warning in plan.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not dry_run:
        click.echo(f"uploaded: {push_to_hub(plan, repo_id, private=private or None, revision=revision)}")
        return
    where = f"{repo_id}@{revision}" if revision else repo_id
    click.echo(f"dry run: would upload {len(plan.files)} files to {where}{' (private)' if private else ''}:")
    for name, size in plan.files:
        click.echo(f"  {name}  {size:,} bytes")
    if not get_token():
        click.echo(f"note: the upload itself needs a token, and none is set here: {LOGIN_HINT}", err=True)
