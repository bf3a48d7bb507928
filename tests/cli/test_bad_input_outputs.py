"""Outputs of ``denoise`` and ``reconstruct``: missing or read-only folders, collisions, the input never overwritten."""

import os

import pytest

from tests.cli.helpers import (
    FAST,
    assert_one_line_error,
    cli,
    leftovers,
    valid_file,
)


def test_output_folders_and_collisions(tmp_path, capsys, tiny):
    source = valid_file(tmp_path, ".png")
    missing = tmp_path / "no such folder"
    cases = [
        (["denoise", source, "-o", missing / "x.png", "--model", tiny], "output folder does not exist"),
        (["denoise", source, source, "-o", missing, "--model", tiny], "existing folder"),
        (["denoise", source, "-o", tmp_path / "x.gif", "--model", tiny], "unsupported output type"),
        (["denoise", "-o", tmp_path / "camera.webp", "--model", tiny], "unsupported output type"),
        (["reconstruct", "deblur", "-o", missing / "x.png", *FAST], "output folder does not exist"),
        (["reconstruct", "deblur", "--plot", missing / "fig.png", *FAST], "output folder does not exist"),
        (["reconstruct", "deblur", "--plot", tmp_path / "fig.xyz", *FAST], "unsupported output type"),
        (["reconstruct", "deblur", "-o", tmp_path / "a.png", "--plot", tmp_path / "a.png", *FAST], "same file"),
        (["reconstruct", "deblur", source, "--plot", source, "--force", *FAST], "overwrite the input"),
    ]
    # the same file under another name is still the input
    alias = tmp_path / "alias.png"
    os.link(source, alias)
    cases.append((["denoise", source, "-o", alias, "--force", "--model", tiny], "overwrite the input"))
    # two inputs that would write the same output
    other = tmp_path / "other"
    other.mkdir()
    valid_file(other, ".png")
    (tmp_path / "out").mkdir()
    cases.append((["denoise", source, other / "valid.png", "-o", tmp_path / "out", "--model", tiny],
                  "both be written"))
    before = leftovers(tmp_path)
    for args, message in cases:
        assert_one_line_error(cli(capsys, *args), message)
    assert leftovers(tmp_path) == before and leftovers(tmp_path / "out") == []
    assert not missing.exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into read-only folders: the check cannot fail here")
def test_read_only_output_folder(tmp_path, capsys, tiny):
    source = valid_file(tmp_path, ".png")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert_one_line_error(cli(capsys, "denoise", source, "-o", locked / "x.png", "--model", tiny),
                              "not writable")
        assert_one_line_error(cli(capsys, "reconstruct", "deblur", "-o", locked / "x.png", *FAST), "not writable")
        assert leftovers(locked) == []
    finally:
        locked.chmod(0o700)

