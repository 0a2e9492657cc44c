"""steps.fs: names from a repository are data, and writes never follow a link."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from steps.fs import (
    UnsafePath,
    check_parent,
    check_relative,
    open_beneath,
    open_dir,
    open_read_beneath,
    private_dir,
    refuse_symlink,
    rename_in,
)


@pytest.mark.parametrize("bad", ["", "/etc/x", "../x", "a/../../x", "a//b", "./a", "a/.", "a\x00b", "a\\b", "a/"])
def test_check_relative_refuses(bad: str) -> None:
    with pytest.raises(UnsafePath):
        check_relative(bad)


@pytest.mark.parametrize("good", ["a", "dump/toc.dat", "a/b/c.gz", "..a", "a..b"])
def test_check_relative_accepts(good: str) -> None:
    assert check_relative(good) == good


def test_open_beneath_never_follows_a_planted_link(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    (victim_dir / "x").write_text("precious")
    os.symlink(victim_dir, root / "sub")            # a directory on the way is a link
    os.symlink(victim_dir / "x", root / "leaf")     # the name itself is a link
    with open_dir(root) as fd:
        with pytest.raises(UnsafePath):
            open_beneath(fd, "sub/x")
        with pytest.raises(UnsafePath):
            open_beneath(fd, "leaf")
        with pytest.raises(UnsafePath):
            open_beneath(fd, "../victim/x")
        with pytest.raises(UnsafePath):
            open_read_beneath(fd, "leaf")
        out = open_beneath(fd, "new/deep/file")
        os.write(out, b"ok")
        os.close(out)
        assert oct((root / "new").stat().st_mode & 0o777) == "0o700"
        assert oct((root / "new/deep/file").stat().st_mode & 0o777) == "0o600"
        rfd = open_read_beneath(fd, "new/deep/file")
        assert os.read(rfd, 10) == b"ok"
        os.close(rfd)
        with pytest.raises(UnsafePath):
            open_beneath(fd, "new/deep/file")  # never an existing file
        rename_in(fd, "new", "renamed")
        with pytest.raises(UnsafePath):
            rename_in(fd, "renamed/deep", "x")
    assert (victim_dir / "x").read_text() == "precious"
    assert (root / "renamed/deep/file").read_bytes() == b"ok"


def test_open_dir_refuses_a_link(tmp_path: Path) -> None:
    os.symlink(tmp_path, tmp_path / "l")
    with pytest.raises(OSError), open_dir(tmp_path / "l"):
        pass
    with pytest.raises(UnsafePath, match="symlink"):
        refuse_symlink(tmp_path / "l", "data directory")
    refuse_symlink(tmp_path, "data directory")


def test_private_dir_is_fresh_and_ours(tmp_path: Path) -> None:
    d = private_dir(tmp_path / "parent", "runbook-fetch-")
    assert d.parent == tmp_path / "parent"
    assert d.stat().st_mode & 0o777 == 0o700
    assert private_dir(tmp_path / "parent", "runbook-fetch-") != d


def test_check_parent_refuses_links_foreign_owners_and_world_writable(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    with pytest.raises(UnsafePath, match="symlink"):
        check_parent(tmp_path / "link")
    with pytest.raises(UnsafePath, match="does not exist"):
        check_parent(tmp_path / "missing")
    os.chmod(real, 0o777)
    with pytest.raises(UnsafePath, match="sticky"):
        check_parent(real)
    os.chmod(real, 0o1777)
    check_parent(real)
    if os.geteuid() == 0:
        os.chown(real, 65534, 65534)
        with pytest.raises(UnsafePath, match="uid 65534"):
            check_parent(real)


def test_open_subdir_walks_without_links_and_creates_when_told(tmp_path: Path) -> None:
    from steps.fs import open_subdir

    root = tmp_path / "root"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, root / "link")
    with open_dir(root) as fd:
        with pytest.raises(UnsafePath):
            open_subdir(fd, "missing")
        sub = open_subdir(fd, "a/b", create=True)
        try:
            assert os.stat(sub).st_ino == (root / "a" / "b").stat().st_ino
            assert (root / "a" / "b").stat().st_mode & 0o777 == 0o700
        finally:
            os.close(sub)
        for bad in ("link", "link/x", "../root", "/tmp"):
            with pytest.raises(UnsafePath):
                open_subdir(fd, bad, create=True)
    assert list(elsewhere.iterdir()) == []


def test_private_enough(tmp_path: Path) -> None:
    from steps.fs import private_enough

    p = tmp_path / "f"
    p.write_text("x")
    os.chmod(p, 0o600)
    assert private_enough(os.stat(p))
    os.chmod(p, 0o640)
    assert private_enough(os.stat(p))
    for mode in (0o620, 0o602):
        os.chmod(p, mode)
        assert not private_enough(os.stat(p))
    if os.geteuid() == 0:  # another user's file, however private its mode
        os.chmod(p, 0o600)
        os.chown(p, 4242, 4242)
        assert not private_enough(os.stat(p))
