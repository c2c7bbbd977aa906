"""Response-matrix loading, validation errors and the accuracy-preserving binarisation."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from evo_merge.errors import UserError
from evo_merge.irt.responses import (
    ResponseMatrix,
    accuracy_preserving_threshold,
    binarise,
    load_responses,
)


def _write(tmp_path, text, name="r.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_long_csv_with_scenarios_and_missing_rows(tmp_path):
    path = _write(
        tmp_path, "subject,item,score,scenario\na,q1,1,math\na,q2,0.5,math\nb,q1,0,math\nb,q3,,code\nc,q3,1,code\n"
    )
    long = load_responses(path)
    assert list(long.columns) == ["subject", "item", "score", "scenario"]
    assert len(long) == 4  # b's empty score means "not evaluated"
    matrix = ResponseMatrix.from_long(long)
    assert matrix.subjects == ["a", "b", "c"] and matrix.items == ["q1", "q2", "q3"]
    assert matrix.item_scenarios == ["math", "math", "code"]
    expected = np.array([[1, 0.5, np.nan], [0, np.nan, np.nan], [np.nan, np.nan, 1]])
    np.testing.assert_array_equal(matrix.scores, expected)


def test_wide_csv_and_parquet_give_the_same_long_table(tmp_path):
    wide = _write(tmp_path, "subject,q1,q2\na,1,0\nb,0,\n")
    long = load_responses(wide)
    assert sorted(zip(long.subject, long["item"], long.score)) == [("a", "q1", 1.0), ("a", "q2", 0.0), ("b", "q1", 0.0)]
    assert set(long.scenario) == {"all"}
    parquet = tmp_path / "r.parquet"
    pd.DataFrame({"subject": ["a", "a", "b"], "item": ["q1", "q2", "q1"], "score": [1.0, 0.0, 0.0]}).to_parquet(parquet)
    by = ["subject", "item"]
    pd.testing.assert_frame_equal(
        load_responses(parquet).sort_values(by, ignore_index=True), long.sort_values(by, ignore_index=True)
    )


def test_a_table_whose_ids_are_its_index_reads_them_there(tmp_path):
    """`df.pivot(index="subject", ...)` keeps the subjects in the index: it was ignored and the first
    item's column read as the subject ids, an item lost and graded scores fitted under names like
    '0.306' without a word (audit 142). A nameless index of numbers is a frame's row numbers."""
    from evo_merge.irt.responses import validate_responses

    long = pd.DataFrame({"subject": ["a", "a", "b", "b"], "item": ["q1", "q2", "q1", "q2"],
                         "score": [0.25, 0.5, 0.75, 1.0]})
    expected = sorted(zip(long.subject, long["item"], long.score))
    pivot = long.pivot(index="subject", columns="item", values="score")
    labelled = long.set_index(pd.Index(["r1", "r2", "r3", "r4"]))  # a nameless index is row labels, ignored
    for frame in (pivot, pivot.rename_axis("model"), long.set_index(["subject", "item"]), labelled,
                  long.set_index("subject", drop=False), long.set_index(pd.date_range("2026-01-01", periods=4)),
                  long[long.score > 0.2], pivot.reset_index().rename_axis("row"),  # a row index beside subject
                  pivot.reset_index().rename(columns={"subject": "model"}).rename_axis("row")):  # numbered rows
        read = validate_responses(frame)
        assert sorted(zip(read.subject, read["item"], read.score)) == expected, frame
    # as a file: parquet keeps the pivot's index, and the long and transposed readings read it too
    pivot.to_parquet(tmp_path / "wide.parquet")
    pivot.T.to_parquet(tmp_path / "rows.parquet")
    pd.DataFrame({"item": ["q1", "q2"], "scenario": ["a", "b"]}).to_csv(tmp_path / "s.csv", index=False)
    for read in (load_responses(tmp_path / "wide.parquet"),
                 load_responses(tmp_path / "rows.parquet", items_as_rows=True),
                 load_responses(tmp_path / "wide.parquet", scenarios=tmp_path / "s.csv")):
        assert sorted(zip(read.subject, read["item"], read.score)) == expected
    with pytest.raises(UserError, match=r"the first column \(q1\) holds scores in \[0, 1\], not subject ids"):
        validate_responses(pivot.reset_index(drop=True))  # the ids lost: a score column is no subject column


def test_category_columns_as_pandas_writes_them_to_parquet_are_read(tmp_path):
    """A `category` scenario column ended in pandas' "Cannot setitem on a Categorical with a new
    category" traceback, from Python and from `irt fit` (audit 142)."""
    frame = pd.DataFrame({"subject": ["a", "a", "b", "b"], "item": ["q1", "q2", "q1", "q2"],
                          "score": [1.0, 0.0, 0.0, 1.0], "scenario": ["math", None, "math", None]})
    frame[["subject", "item", "scenario"]] = frame[["subject", "item", "scenario"]].astype("category")
    frame.to_parquet(tmp_path / "r.parquet")
    read = load_responses(tmp_path / "r.parquet")
    assert sorted(zip(read.subject, read["item"], read.scenario)) == [
        ("a", "q1", "math"), ("a", "q2", "all"), ("b", "q1", "math"), ("b", "q2", "all")]



@pytest.mark.parametrize(
    ("text", "name", "message"),
    [
        ("subject,item,score\na,q1,yes\n", "r.csv", "non-numeric score 'yes' for subject a, item q1"),
        # a long table under other column names reads as wide: said so, naming the columns (audit 122)
        ("model,question,value\na,q1,1\nb,q1,0\n", "r.csv", "non-numeric score 'q1' for subject a, item question "
         "(read as a wide table, one row per subject and a column per item; a long one needs columns "
         "subject,item,score, and these are model, question, value)"),
        ("subject,item,score\na,q1,1.5\n", "r.csv", "score 1.5 out of [0, 1] for subject a, item q1"),
        ("subject,item,score\na,q1,-1\n", "r.csv", "out of [0, 1]"),
        ("subject,item,score\na,q1,1\na,q1,0\n", "r.csv", "duplicate response for subject a, item q1"),
        ("subject,item,score\na,q1,1\na,q2,\n", "r.csv", "item q2 has no responses"),
        ("subject,q1,q2\na,1,\nb,0,\n", "r.csv", "item q2 has no responses"),
        ("subject,item,score\n", "r.csv", "no responses"),
        ("subject,item\na,q1\n", "r.csv", "long format needs a 'score' column"),
        ("subject,item,score,scenario\na,q1,1,x\nb,q1,0,y\n", "r.csv", "item q1 is listed under several scenarios"),
        ("subject,item,score,scenario\na,q1,1,overall\n", "r.csv", "scenario name 'overall' is reserved"),
        ("subject,item,score\na,q1,1\n", "r.txt", "unsupported responses format '.txt'"),
        ("\x00\x01garbage", "r.parquet", "cannot read responses"),
    ],
)
def test_bad_inputs_raise_one_line_user_errors(tmp_path, text, name, message):
    with pytest.raises(UserError) as err:
        load_responses(_write(tmp_path, text, name))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_responses(tmp_path / "nope.csv")


def test_threshold_preserves_mean_accuracy():
    # mean 0.5; cutting at 0.4 keeps 3/6 = 0.5 exactly, any other cut does not
    values = np.array([0.0, 0.1, 0.3, 0.4, 0.9, 1.0, np.nan])
    assert accuracy_preserving_threshold(values) == 0.4
    assert accuracy_preserving_threshold(np.array([0.0, 1.0, 1.0])) == 0.5  # binary: unchanged
    out = binarise(np.array([[0.3, 0.4, np.nan]]), np.array([0.4, 0.4, 0.4]))
    np.testing.assert_array_equal(out, [[0.0, 1.0, np.nan]])


@pytest.mark.parametrize("distinct", [7, 40, 5000])  # ties; fewer than 256 cuts; quantile cuts
def test_threshold_equals_trying_every_cut(distinct):
    rng = np.random.default_rng(distinct)
    values = rng.integers(0, distinct, 3000) / (distinct - 1)
    values[::97] = np.nan
    kept = values[~np.isnan(values)]
    cuts = np.unique(kept) if distinct < 256 else np.unique(np.quantile(kept, np.linspace(0, 1, 257)))
    cuts = cuts[cuts > 0]
    share = np.array([np.mean(kept >= cut) for cut in cuts])  # each cut tried on its own
    assert accuracy_preserving_threshold(values) == cuts[np.argmin(np.abs(share - kept.mean()))]


@pytest.mark.parametrize(
    ("header", "missing"),
    [("model,item,score", "missing 'subject'"), ("subject,items,score", "missing 'item'"),
     ("model,items,score", "missing 'subject', 'item'")],
)
def test_a_long_file_with_a_misnamed_id_column_is_refused_naming_it(tmp_path, header, missing, caplog):
    """A `score` column makes it long: read as wide, it melted into a second `score` column (a pandas crash);
    and it was first said to be read as wide, with --items-as-rows offered, which is no fix for it."""
    path = _write(tmp_path, f"{header}\n" + "".join(f"m{i},q1,1\n" for i in range(20)))
    scenarios = tmp_path / "scenarios.csv"
    scenarios.write_text("item,scenario\nq1,a\n")
    columns = header.replace(",", ", ")
    # read alone, as items by rows, or with scenarios (which read it as wide: "no scenario for item 'item'")
    for options in ({}, {"items_as_rows": True}, {"scenarios": scenarios}):
        with pytest.raises(UserError) as err, caplog.at_level("WARNING", logger="evo_merge"):
            load_responses(path, **options)
        assert str(err.value) == (f"{path}: a long table needs columns subject,item,score; {missing} "
                                  f"(columns: {columns})"), options
    assert "--items-as-rows" not in caplog.text


def test_a_column_named_twice_is_refused_naming_it(tmp_path):
    """pandas renamed the second q3 to q3.1: one item silently became two, one of them not in the file."""
    path = _write(tmp_path, "subject,q1,q3,q2,q3\na,1,0,1,1\nb,0,1,0,0\n")
    with pytest.raises(UserError) as err:
        load_responses(path)
    assert str(err.value) == f"{path}: column 'q3' appears 2 times in the header"


def test_a_matrix_exported_without_a_header_is_told_to_add_one(tmp_path):
    """A leaderboard's bare 0/1 matrix: its first row of scores was reported as one column named
    many times."""
    path = _write(tmp_path, "1,0,1.0,1\n0,0,1,0\n")
    with pytest.raises(UserError) as err:
        load_responses(path)
    assert str(err.value) == (f"{path}: its first row is scores (1, 0, 1.0, ...), not a header; add one: "
                              "subject,<item ids> for one row per subject, or item,<subject ids> for one row "
                              "per item (with --items-as-rows)")
    assert len(load_responses(_write(tmp_path, "subject,0,1,2\na,1,0,1\n", "numbered.csv"))) == 3  # numbered items


def test_ids_spelled_like_missing_values_are_ids_and_scores_keep_their_missing_spellings(tmp_path):
    """pandas read NA/None/null/nan as missing even with dtype=str: an item NA was refused as an
    empty id, a scenario NA merged into the default one (a parquet file kept them)."""
    text = ("subject,item,score,scenario\nNone,NA,1,NA\nnull,NA,0,NA\nNone,nan,NA,EU\nnull,nan,0.5,EU\n"
            "None,N/A,,\nnull,N/A,1,\n")
    long = load_responses(_write(tmp_path, text))
    assert sorted(map(tuple, long.to_numpy().tolist())) == [  # a score NA or empty: not evaluated
        ("None", "NA", 1.0, "NA"), ("null", "N/A", 1.0, "all"), ("null", "NA", 0.0, "NA"), ("null", "nan", 0.5, "EU"),
    ]
    with pytest.raises(UserError, match="empty item id in row 2"):  # an empty id cell is still missing
        load_responses(_write(tmp_path, "subject,item,score\nNA,q1,1\nNA,,0\n"))


def test_a_wide_csv_keeps_subject_ids_as_text_whatever_its_subject_column_is_called(tmp_path):
    """Text was forced only on a column named `subject`: under `model`, 007 was read as the number 7."""
    long = load_responses(_write(tmp_path, "model,q1,q2\n007,1,0\n1e3,0,1\n"))
    assert sorted(zip(long.subject, long["item"], long.score)) == [
        ("007", "q1", 1.0), ("007", "q2", 0.0), ("1e3", "q1", 0.0), ("1e3", "q2", 1.0),
    ]


def test_an_empty_csv_is_named_as_empty(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("\n\n")
    with pytest.raises(UserError, match=f"^{path}: empty \\(no header row\\)$"):
        load_responses(path)


def _by(frame):
    return frame.sort_values(["subject", "item"], ignore_index=True)


def test_items_as_rows_reads_the_transpose_of_a_wide_table(tmp_path):
    """A leaderboard's items-by-models export reads as the same long table as its transpose, ids
    kept as written (`007`, a model called `NA`), an empty score not evaluated."""
    rows = _write(tmp_path, ",gpt,NA\n007,1,0\nq2,0.5,\nq3,0,1\n", "rows.csv")
    subjects = _write(tmp_path, "subject,007,q2,q3\ngpt,1,0.5,0\nNA,0,,1\n", "subjects.csv")
    long = load_responses(rows, items_as_rows=True)
    pd.testing.assert_frame_equal(_by(long), _by(load_responses(subjects)))
    assert set(long.subject) == {"gpt", "NA"} and "007" in set(long["item"]) and len(long) == 5
    parquet = tmp_path / "rows.parquet"
    pd.DataFrame({"item": ["007", "q2", "q3"], "gpt": [1, 0.5, 0], "NA": [0, np.nan, 1]}).to_parquet(parquet)
    pd.testing.assert_frame_equal(_by(load_responses(parquet, items_as_rows=True)), _by(long))


def test_a_scenarios_file_names_each_item_s_scenario(tmp_path):
    mapping = _write(tmp_path, "item,scenario\nq1,math\nq2,code\nq3,code\nunused,other\nq1,math\n", "map.csv")
    wide = _write(tmp_path, "subject,q1,q2,q3\na,1,0,1\nb,0,1,\n")
    long = load_responses(wide, scenarios=mapping)
    assert dict(zip(long["item"], long.scenario)) == {"q1": "math", "q2": "code", "q3": "code"}
    plain = _write(tmp_path, "subject,item,score\na,q1,1\na,q2,0\nb,q3,1\n", "long.csv")
    assert dict(zip(*load_responses(plain, scenarios=mapping)[["item", "scenario"]].to_numpy().T)) == {
        "q1": "math", "q2": "code", "q3": "code"}
    rows = _write(tmp_path, "item,a,b\nq1,1,0\nq2,0,1\nq3,1,\n", "rows.csv")
    pd.testing.assert_frame_equal(_by(load_responses(rows, items_as_rows=True, scenarios=mapping)), _by(long))
    assert ResponseMatrix.from_long(long).item_scenarios == ["math", "code", "code"]


@pytest.mark.parametrize(
    ("responses", "mapping", "message"),
    [
        ("subject,q1,q2\na,1,0\n", "item,scenario\nq1,math\n", "map.csv: no scenario for item 'q2' of"),
        ("subject,q1\na,1\n", "item,scenario\nq1,math\nq1,code\n", "map.csv: item 'q1' of"),  # both files named
        ("subject,q1\na,1\n", "item,benchmark\nq1,math\n", "needs columns item,scenario; missing 'scenario'"),
        ("subject,q1\na,1\n", "item,scenario\nq1,\n", "map.csv: empty scenario in row 1"),
        ("subject,item,score,scenario\na,q1,1,x\n", "item,scenario\nq1,math\n", "has a scenario column already"),
    ],
)
def test_a_bad_scenarios_file_is_refused_naming_it(tmp_path, responses, mapping, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_responses(_write(tmp_path, responses), scenarios=_write(tmp_path, mapping, "map.csv"))


def test_a_missing_scenarios_file_is_named(tmp_path):
    with pytest.raises(UserError, match="scenarios file .*nope.csv not found"):
        load_responses(_write(tmp_path, "subject,q1\na,1\n"), scenarios=tmp_path / "nope.csv")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("subject,item,score\na,q1,1\n", "--items-as-rows is for a wide table"),
        ("item,a\nq1,1\nq1,0\n", "item 'q1' has more than one row"),
        ("item,a\n,1\n", "empty item id in row 1"),
        ("item,a\nq1,1\nsubject,0\n", "an item called 'subject' cannot be a column of a wide table"),
        ("item,a\nscore,1\n", "an item called 'score' cannot be a column of a wide table"),
        # one row per subject, the layout without the flag: it was fitted transposed without a word
        ("subject,q1,q2\na,1,0\nb,0,1\n", "its first column is 'subject', so its rows are subjects"),
    ],
)
def test_items_as_rows_refuses_what_is_not_items_by_subjects(tmp_path, text, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_responses(_write(tmp_path, text), items_as_rows=True)


def test_a_table_far_taller_than_wide_says_how_to_read_items_as_rows(tmp_path, caplog):
    tall = "model,m1,m2\n" + "".join(f"q{i},1,0\n" for i in range(20))
    path = _write(tmp_path, tall)
    with caplog.at_level("WARNING", logger="evo_merge.irt.responses"):
        load_responses(path)
    assert "read as 20 subjects x 2 items" in caplog.text and "--items-as-rows" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="evo_merge.irt.responses"):
        load_responses(path, items_as_rows=True)
        load_responses(_write(tmp_path, "subject,q1,q2\na,1,0\nb,0,1\n", "square.csv"))
    assert caplog.text == ""


@pytest.mark.parametrize(("text", "message"), [
    ("subject,item,score\ns1,i1,1\ns2,i3,1,oops\ns2,i1,0\n", "line 3 has 4 fields where the header has 3"),
    ("subject,item,score\r\ns1,i1,1\r\n\r\ns2,i1", "line 4 has 2 fields where the header has 3"),  # cut mid-row
    ("subject,q1,q2\na,1,0\nb,1\n", "line 3 has 2 fields where the header has 3"),
    ('subject,item,score\n"s,1",i1,1\ns2,i1,0,0\n', "line 3 has 4 fields where the header has 3"),  # quoted
])
def test_a_row_unlike_the_header_is_named_not_cut_or_padded(tmp_path, text, message):
    """pandas dropped a row's extra fields silently (it reads the columns asked for) and padded a
    short row with a missing score, read as 'not evaluated'."""
    with pytest.raises(UserError, match=f"r.csv: {message}$"):
        load_responses(_write(tmp_path, text))


def test_blank_lines_and_windows_line_ends_are_rows_as_before(tmp_path):
    table = load_responses(_write(tmp_path, '\r\nsubject,item,score\r\n"s,1",i1,1\r\n\r\ns2,i1,0\r\n\r\n'))
    assert table[["subject", "score"]].values.tolist() == [["s,1", 1.0], ["s2", 0.0]]
    table = load_responses(_write(tmp_path, "subject,item,score\n\ns1,i1,1\n\n\ns2,i1,0"))
    assert table["score"].tolist() == [1.0, 0.0]
    (tmp_path / "mac.csv").write_bytes(b"subject,item,score\rs1,i1,1\rs2,i1,0\r")  # old Mac line ends
    assert load_responses(tmp_path / "mac.csv")["score"].tolist() == [1.0, 0.0]


def test_a_scenario_missing_from_some_rows_of_an_item_is_named_and_an_unscored_subject_is_said(tmp_path, caplog):
    """One empty scenario cell was reported as "item q1 is listed under several scenarios"; a subject
    with no scores at all (a model column not filled in yet) was left out without a word."""
    gap = "subject,item,score,scenario\na,q1,1,s\na,q2,0,s\nb,q1,0,\nb,q2,1,s\n"
    with pytest.raises(UserError, match=re.escape("empty scenario in row 3 for item q1, which other rows put in 's'")):
        load_responses(_write(tmp_path, gap))
    none = "subject,item,score,scenario\na,q1,1,\nb,q1,0,\n"  # no scenario for an item anywhere: the default one
    assert set(load_responses(_write(tmp_path, none, "none.csv"))["scenario"]) == {"all"}
    with caplog.at_level("WARNING", logger="evo_merge.irt.responses"):
        long = load_responses(_write(tmp_path, "subject,q1,q2\na,1,0\nlate,,\nb,0,1\n", "wide.csv"))
    assert sorted(set(long["subject"])) == ["a", "b"]
    assert "left out 1 subject(s) with no scores: late" in caplog.text
