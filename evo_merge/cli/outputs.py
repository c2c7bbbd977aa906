"""Where a command's outputs may go: checked before its work (minutes of scoring or fitting), so a
mistyped `--out` never replaces a file or folder of the user's that the command did not write."""

from __future__ import annotations

from pathlib import Path

from evo_merge.errors import UserError
from evo_merge.files import atomic_write, check_writable, parse_json
from evo_merge.user_paths import expand_home


def check_output_file(out: Path, overwrite: bool, option: str = "--out") -> None:
    """`option`, a CSV file the command writes whole: not a folder, and an existing one only with --overwrite.
    `-` is refused: a command's summary goes to standard output, and a file named `-` is a mistake."""
    if str(out) == "-":
        raise UserError(f"{option} -: these commands write a file, not standard output; give the file's path")
    if out.is_dir():
        raise UserError(f"{option} {out}: is a folder; give the path of the CSV file to write")
    if out.exists() and not overwrite:
        raise UserError(f"{option} {out}: already exists (--overwrite replaces it)")
    check_writable(out, option)


def check_outside_run(out: Path, run: Path, kept: str) -> None:
    """`--out` of a command reading run folder `run`: not inside it, whose files the run owns (`report`
    rewrites its tables, `resume` restores `kept`)."""
    if expand_home(out).resolve().is_relative_to(run.resolve()):
        raise UserError(f"--out {out}: is inside the run folder, whose files the run owns ({kept}); write elsewhere")


def write_output_file(out: Path, text: str, overwrite: bool, option: str = "--out") -> None:
    """Write a file `check_output_file` passed, its folders made first: they may be new (a missing
    folder was found out only as the result was saved, after the work). Without `overwrite` a file
    put at `out` while the command worked (another command's output, written after the check) is
    kept: the two both said "wrote", and one of them had been replaced (audit 112)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(out, text, replace=overwrite)
    except FileExistsError:
        raise UserError(f"{option} {out}: appeared while this command worked (another command's output?); it is "
                        "left as it is and this output was not written (--overwrite replaces it)") from None


def check_irt_model_folder(out: Path, overwrite: bool) -> None:
    """--out, a folder `irt fit` writes a model into: new or empty, or an IRT model folder with --overwrite
    (its stored anchors go with the model they were chosen on); never a file or another folder."""
    if not out.exists():
        return check_writable(out, "--out")
    if not out.is_dir():
        raise UserError(f"--out {out}: is a file; give the folder to write the model into")
    from evo_merge.irt.model import SAVING

    if not any(p for p in out.iterdir() if not p.name.startswith(SAVING)):  # empty, or a killed save's leftovers
        return
    if not _holds_irt_model(out):
        raise UserError(f"--out {out}: holds files and no IRT model; refusing to write into it")
    if not overwrite:
        raise UserError(f"--out {out}: holds an IRT model already (--overwrite replaces it and its anchors)")
    from evo_merge.irt.anchor_files import refuse_link

    refuse_link(out / "anchors")  # its stale sets are removed: not through a link, nor after the fit


def _holds_irt_model(folder: Path) -> bool:
    from evo_merge.irt.model import is_model_meta

    try:
        return is_model_meta(parse_json((folder / "model.json").read_text()))
    except (OSError, ValueError):
        return False
