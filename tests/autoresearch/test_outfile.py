"""Output files (export, report): symlinks kept, special files and directories refused."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from autoresearch.cli import main
from autoresearch.outfile import OutputRefused, write_text
from autoresearch.study_file import StudySpec


def test_write_through_a_symlink_keeps_the_link(tmp_path: Path) -> None:
    target = tmp_path / "real.toml"
    target.write_text("old")
    target.chmod(0o640)
    link = tmp_path / "link.toml"
    link.symlink_to(target)
    write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o640  # the replaced file keeps its permissions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.toml", "real.toml"]  # no temp


def test_special_files_and_directories_are_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OutputRefused, match=r"is not a regular file \(a FIFO\)"):
        write_text(fifo, "x")
    with pytest.raises(OutputRefused, match="is a directory"):
        write_text(tmp_path, "x")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "new" / "file.toml")
    write_text(dangling, "made")  # a link to a file that does not exist yet: created there
    assert (tmp_path / "new" / "file.toml").read_text() == "made"


@pytest.mark.parametrize("command", ["export", "report"])
def test_output_to_dev_null_is_refused_and_dev_null_survives(
    spec: StudySpec, capsys: Any, command: str
) -> None:
    assert main([command, str(spec.path), "-o", os.devnull]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: -o /dev/null is not a regular file (a character device)")
    assert len(err.splitlines()) == 1
    assert Path(os.devnull).is_char_device()


@pytest.mark.parametrize("command", ["export", "report"])
def test_output_through_a_symlink(spec: StudySpec, tmp_path: Path, command: str) -> None:
    target = tmp_path / "real.out"
    link = tmp_path / "out.link"
    link.symlink_to(target)
    assert main([command, str(spec.path), "-o", str(link)]) == 0
    assert link.is_symlink() and target.stat().st_size > 100


@pytest.mark.parametrize("command", ["export", "report"])
def test_output_that_is_a_directory_is_a_one_line_error(
    spec: StudySpec, tmp_path: Path, capsys: Any, command: str
) -> None:
    assert main([command, str(spec.path), "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is a directory" in err and len(err.splitlines()) == 1
