"""Progress where stderr is not a terminal (a log file, a batch job): lines as stages advance."""

from io import StringIO

from rich.console import Console

from evo_merge.cli.progress import STAGE_LINE, StageBars, StageLines, track


def test_a_log_gets_each_stage_as_it_ends_not_only_when_the_run_ends(capsys):
    """rich draws bars only on a terminal and, elsewhere, prints them once when they stop: a
    campaign of hours sent to a log said nothing until it ended."""
    with StageBars() as bars:
        for done in range(3):
            bars("calibration", done, 2)
        bars("generation 1/2", 0, 4)
        bars("generation 1/2", 1, 4)
        during = capsys.readouterr().err
    assert during.splitlines() == ["calibration: 2/2 in 0:00:00"]
    assert capsys.readouterr().err == ""  # no bar frames when they stop


def test_a_long_stage_says_how_far_it_is_at_most_every_interval():
    log = StringIO()
    lines = StageLines(Console(file=log), every=0.0)
    for done in range(4):
        lines("exporting best-a", done, 3)
    lines("exporting best-a", 3, 3)  # said once
    assert log.getvalue().splitlines() == ["exporting best-a: 1/3 (0:00:00)", "exporting best-a: 2/3 (0:00:00)",
                                           "exporting best-a: 3/3 in 0:00:00"]
    assert all(STAGE_LINE.match(line) for line in log.getvalue().splitlines())  # what tests of one-line errors skip
    quiet = StringIO()
    lines = StageLines(Console(file=quiet), every=3600.0)
    for done in range(4):
        lines("exporting best-a", done, 3)
    assert quiet.getvalue().splitlines() == ["exporting best-a: 3/3 in 0:00:00"]


def test_a_stage_with_nothing_to_do_is_not_a_line():
    log = StringIO()
    lines = StageLines(Console(file=log), every=0.0)
    lines("final: race (12.5% of the items)", 0, 0)
    lines("baselines", 0, 1)
    lines("baselines", 1, 1)
    assert log.getvalue().splitlines() == ["baselines: 1/1 in 0:00:00"]


def test_a_merge_sent_to_a_log_says_when_it_ends(capsys):
    assert list(track(range(5), 5, "merging (ties)")) == list(range(5))
    assert capsys.readouterr().err.splitlines() == ["merging (ties): 5/5 in 0:00:00"]


def test_a_candidate_s_items_are_a_line_only_while_one_takes_long_and_their_bar_goes_with_its_stage():
    """At 7B one candidate takes minutes on every item: its items are followed beside the stage,
    but a log gets no line per candidate, only one every interval while a candidate is scored."""
    from evo_merge.search.evaluator import ITEMS, JOB_PARTS

    log = StringIO()
    lines = StageLines(Console(file=log), every=0.0)
    for _candidate in range(2):
        for done in (0, 512, 1024, 1200):
            lines("calibration" + JOB_PARTS[ITEMS], done, 1200)
    lines("calibration", 2, 2)
    assert log.getvalue().splitlines() == 2 * [f"calibration{JOB_PARTS[ITEMS]}: 512/1200 (0:00:00)",
                                               f"calibration{JOB_PARTS[ITEMS]}: 1024/1200 (0:00:00)"] + [
        "calibration: 2/2 in 0:00:00"]
    assert all(STAGE_LINE.match(line) for line in log.getvalue().splitlines())
    bars = StageBars()
    bars("calibration", 0, 2)
    bars("calibration" + JOB_PARTS[ITEMS], 512, 1200)
    assert len(bars.progress.tasks) == 2
    bars("calibration", 2, 2)
    assert [t.description for t in bars.progress.tasks] == ["calibration"]


def test_each_candidate_s_items_bar_runs_on_its_own_clock():
    """The items bar is reused by every candidate of a stage: rich keeps a task it saw finish
    finished (time remaining 0) when its count goes back, so from the second candidate on (with
    the same number of items: every candidate of a calibration or a generation) it said 0:00:00."""
    from evo_merge.search.evaluator import ITEMS, JOB_PARTS

    bars, stage = StageBars(), "calibration" + JOB_PARTS[ITEMS]
    bars("calibration", 0, 2)
    for done in (512, 1024):  # the first candidate
        bars(stage, done, 1024)
    bars(stage, 512, 1024)  # the second one's first call
    task = next(t for t in bars.progress.tasks if t.description == stage)
    assert not task.finished and task.time_remaining != 0 and task.completed == 512


def test_a_candidate_s_merge_is_followed_like_its_items_and_goes_with_its_stage():
    from evo_merge.search.evaluator import ITEMS, JOB_PARTS, MERGING

    log = StringIO()
    lines = StageLines(Console(file=log), every=0.0)
    for _candidate in range(2):
        for done in (0, 100, 219):
            lines("generation 1" + JOB_PARTS[MERGING], done, 219)
    assert log.getvalue().splitlines() == 2 * [f"generation 1{JOB_PARTS[MERGING]}: 100/219 (0:00:00)"]
    bars = StageBars()
    bars("generation 1", 0, 16)
    bars("generation 1" + JOB_PARTS[MERGING], 219, 219)
    bars("generation 1" + JOB_PARTS[MERGING], 3, 219)  # the next candidate's merge: its own clock
    task = next(t for t in bars.progress.tasks if t.description.endswith(JOB_PARTS[MERGING]))
    assert not task.finished and task.completed == 3
    bars("generation 1" + JOB_PARTS[ITEMS], 5, 65)
    bars("generation 1", 16, 16)
    assert [t.description for t in bars.progress.tasks] == ["generation 1"]


def test_results_sent_to_a_file_are_not_folded_at_80_columns(monkeypatch):
    """A row of the run's summary (a pick and three tasks' est / search / held-out) is about 100
    characters: folded at 80 in a log, its numbers were cut over two lines."""
    from rich.table import Table

    from evo_merge.console import PIPE_WIDTH, results_console

    monkeypatch.delenv("COLUMNS", raising=False)
    table = Table("model", "arith", "lang", "seq")
    table.add_row("best-arith (task_arithmetic)", *["0.837 / 0.846 / 0.896"] * 3)
    log = StringIO()
    console = results_console(file=log)
    assert console.width == PIPE_WIDTH
    console.print(table)
    assert any(line.count("0.837 / 0.846 / 0.896") == 3 for line in log.getvalue().splitlines())
    monkeypatch.setenv("COLUMNS", "60")  # said by the user: kept
    assert results_console(file=StringIO()).width == 60
    assert results_console(file=StringIO(), width=90).width == 90
    named = StringIO()
    results_console(file=named).print("[/b]")  # a user's name is text, not markup (rich would raise)
    assert named.getvalue() == "[/b]\n"


def test_a_stage_that_stops_moving_is_said_in_a_log_while_it_stays_still():
    """A task waiting on a server or a deadlocked plugin stalled a campaign with nothing in its
    log: the lines moved only with progress, so a stalled run read like a killed one."""
    import time

    from evo_merge.search.evaluator import ITEMS, JOB_PARTS

    log = StringIO()
    lines = StageLines(Console(file=log), every=3600.0, quiet=0.2)
    with lines.watching():
        lines("generation 2/8", 3, 16)
        lines("generation 2/8" + JOB_PARTS[ITEMS], 40, 52)
        time.sleep(0.7)
    said = log.getvalue().splitlines()
    assert 1 <= len(said) <= 3, said  # again every `quiet` seconds, not at every check
    assert said[0] == f"generation 2/8{JOB_PARTS[ITEMS]}: 40/52 (nothing new for 0:00:00, still working)"
    assert all(STAGE_LINE.match(line) for line in said)
    moving = StringIO()  # a stage that moves, or has ended, is not called quiet
    lines = StageLines(Console(file=moving), every=3600.0, quiet=0.3)
    with lines.watching():
        for done in range(7):
            lines("calibration", done, 6)
            time.sleep(0.1)
        time.sleep(0.5)
    assert moving.getvalue().splitlines() == ["calibration: 6/6 in 0:00:00"]


def test_a_candidate_s_part_ending_leaves_its_stage_to_be_said():
    from evo_merge.search.evaluator import ITEMS, JOB_PARTS

    log = StringIO()
    lines = StageLines(Console(file=log), every=3600.0, quiet=0.0)
    lines("generation 1", 0, 4)
    lines("generation 1" + JOB_PARTS[ITEMS], 10, 20)  # fails partway: never ends
    lines("generation 1", 4, 4)
    lines.check()  # everything has ended: nothing to say
    lines("final", 0, 2)
    lines.check()
    assert log.getvalue().splitlines() == ["generation 1: 4/4 in 0:00:00",
                                           "final: 0/2 (nothing new for 0:00:00, still working)"]


def test_bars_on_a_terminal_show_a_running_clock():
    from rich.progress import TimeElapsedColumn

    assert any(isinstance(column, TimeElapsedColumn) for column in StageBars().progress.columns)


def test_a_duration_reads_as_a_clock_and_a_clock_set_back_as_zero():
    from evo_merge.progress import hms

    assert hms(3723.9) == "1:02:03" and hms(59) == "0:00:59" and hms(-5) == "0:00:00"  # was -1:59:55


def test_a_log_under_force_color_gets_lines_not_bar_frames(capsys, monkeypatch):
    """FORCE_COLOR (set by many CI systems) made rich take the log for a terminal: a tiny run wrote
    hundreds of KB of redrawn bars and no stage line."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    with StageBars() as bars:
        for done in range(3):
            bars("calibration", done, 2)
    assert capsys.readouterr().err.splitlines() == ["calibration: 2/2 in 0:00:00"]


def test_a_dumb_terminal_gets_lines_where_rich_draws_no_bars(monkeypatch):
    """On TERM=dumb rich draws no bars and the lines were off (it is a terminal): nothing until the end."""
    from evo_merge.cli.progress import live

    class Tty(StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("TERM", "dumb")
    log = Tty()
    console = Console(file=log)
    assert not live(console)
    lines = StageLines(console, every=0.0)
    lines("calibration", 2, 2)
    assert log.getvalue().splitlines() == ["calibration: 2/2 in 0:00:00"]
    monkeypatch.setenv("TERM", "xterm")
    assert live(Console(file=Tty()))
