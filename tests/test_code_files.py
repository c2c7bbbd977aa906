"""The digest a run folder records of a user's own code: of one file, the first 16 hex digits of its
SHA-256, as folders written before `code_files` recorded a method's file (a resume of one compares
against it); of several, their text in the order of their names."""

import hashlib

from evo_merge.code_files import files_digest, source_file


def test_the_digest_of_one_file_is_the_one_run_folders_hold_and_of_several_follows_their_names(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("x = 1\n")
    b.write_text("y = 2\n")
    assert files_digest([str(a)]) == hashlib.sha256(b"x = 1\n").hexdigest()[:16]
    assert files_digest([str(b), str(a)]) == hashlib.sha256(b"x = 1\ny = 2\n").hexdigest()[:16]
    assert files_digest([str(a), str(tmp_path / "gone.py")]) is None


def test_code_no_file_holds_has_no_source_file():
    assert source_file(len) is None  # a built-in
    assert source_file(files_digest).endswith("code_files.py")
