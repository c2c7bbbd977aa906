"""`evo-merge init` and `evo-merge demo`: a runnable campaign on the offline tiny-lm zoo."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from evo_merge.cli.paths import UserPath

DEFAULT_ZOO = Path("runs/zoo/tiny-lm")
ZOO = click.option("--zoo", default=str(DEFAULT_ZOO), type=UserPath(path_type=Path), show_default=True,
                   help="tiny-lm zoo folder (built if missing)")


def _zoo(zoo: Path) -> list[str]:
    """Build (or reuse) the tiny-lm zoo; return its endpoint names."""
    from pydantic import ValidationError

    from evo_merge.cli.progress import StageBars
    from evo_merge.zoo.manifest import has_zoo, read_zoo
    from evo_merge.zoo.tinylm import TinyLMSettings, build_tinylm_zoo

    built = read_zoo(zoo) if has_zoo(zoo) else None
    try:  # a finished tiny-lm zoo is used with the settings it was built with (`zoo build --seed 1`)
        settings = TinyLMSettings(**built.settings) if built and built.kind == "tiny-lm" and built.key else None
    except ValidationError:  # settings an older version wrote: built again, as their zoo would be
        settings = None
    with StageBars() as bars:  # 5 minutes of training: a bar on a terminal, a line every 30 s in a log
        build_tinylm_zoo(zoo, seed=settings.seed if settings else 0, settings=settings, progress=bars)
    return read_zoo(zoo).endpoints


@click.command()
@click.option("--out", default="campaign.yaml", type=UserPath(path_type=Path), show_default=True,
              help="campaign file to write (refused if it exists)")
@ZOO
def init(out: Path, zoo: Path) -> None:
    """Write a commented, runnable example campaign for the demo zoo."""
    from evo_merge.cli.template import campaign_text, run_command
    from evo_merge.errors import UserError
    from evo_merge.files import atomic_write, check_writable

    if out.exists():
        raise UserError(f"{out} already exists; choose another --out")
    check_writable(out, "--out")  # before the zoo's minutes: a path under a file was mkdir's "File exists" after
    families = _zoo(zoo)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = run_command(out, f"runs/{out.stem}")  # the file's first line says what the console says
    atomic_write(out, campaign_text(Path(zoo).resolve(), families, name=out.stem, command=command))
    click.echo(f"wrote {out}; run it with: {command}")


@click.command()
@click.option("--out", default="runs/demo", type=UserPath(path_type=Path), show_default=True,
              help="run folder (created; the demo's run in it is resumed), its campaign written beside it as OUT.yaml "
                   "(a file there the demo did not write is left alone, and the demo stops)")
@ZOO
def demo(out: Path, zoo: Path) -> None:
    """Build (or reuse) the tiny-lm zoo and run a short campaign on the shipped benchmarks."""
    from evo_merge.cli.campaign import start_campaign
    from evo_merge.cli.template import campaign_text, run_command
    from evo_merge.files import atomic_write
    from evo_merge.search.run_folder import check_run_folder

    check_run_folder(out)  # before the zoo's minutes: a folder of other files is refused, as by `run`
    folder = out.resolve()  # `--out .` has a name only once resolved
    config = folder.parent / f"{folder.name}.yaml"  # beside the run folder: runs/demo.yaml
    command = run_command(config, folder)
    _check_own_file(config, command, lambda text: text.startswith(f"# evo-merge campaign: `{command}`\n"))  # pre-zoo
    text = campaign_text(Path(zoo).resolve(), _zoo(zoo), name=folder.name, command=command)
    _check_own_file(config, command, lambda written: written == text)  # the demo's, as written: a rerun resumes it
    _check_run_is_the_demo(out, text, config)
    config.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(config, text)  # a kill mid-write left a half file that the next `demo` refused as the user's
    start_campaign(config, out)


def _check_run_is_the_demo(out: Path, text: str, config: Path) -> None:
    """A run folder bound to another campaign is refused before the demo's file is written: `run`
    refused it after, leaving the file and advice (resume with its own campaign) that was no use."""
    import yaml

    from evo_merge.config import Campaign
    from evo_merge.errors import UserError
    from evo_merge.schema import validate
    from evo_merge.search.binding import bound_defaults, folder_differences

    if bound_defaults(out) is None:  # a new folder: nothing to compare (nor the campaign to read yet)
        return
    if (changed := folder_differences(out, validate(Campaign, yaml.safe_load(text), config))) is not None:
        raise UserError(f"--out {out}: holds the run of another campaign{changed}; give the demo another --out")


def _check_own_file(config: Path, command: str, is_demos: Callable[[str], bool]) -> None:
    """The demo writes its campaign beside its run folder: a file there that it did not write (or
    one edited since) is the user's, and is not replaced; `command` runs it."""
    from evo_merge.errors import UserError

    if config.exists() and not (config.is_file() and is_demos(config.read_text(errors="replace"))):
        raise UserError(f"{config} exists and is not the campaign the demo writes there (edited since?); it is left "
                        f"as it is: run it with `{command}`, or move it away")
