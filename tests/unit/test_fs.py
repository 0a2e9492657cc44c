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


# --- directories beneath a descriptor, owners and modes on descriptors ------------------------------------


def _state(p: Path) -> tuple[int, int, int]:
    st = os.lstat(p)
    return st.st_mode, st.st_uid, st.st_mtime_ns


def test_make_real_dir_refuses_a_link_and_sets_mode_on_the_directory_itself(tmp_path: Path) -> None:
    from steps.fs import make_real_dir

    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    before = _state(victim)
    os.symlink(victim, tmp_path / "link")
    with pytest.raises(UnsafePath, match="is a symlink"):
        make_real_dir(tmp_path / "link", mode=0o700, uid=os.getuid() + 1 if os.geteuid() == 0 else None)
    assert _state(victim) == before
    make_real_dir(tmp_path / "a" / "b", mode=0o700)
    assert oct((tmp_path / "a" / "b").stat().st_mode & 0o777) == "0o700"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_chown_tree_never_follows_a_link_inside_or_at_the_top(tmp_path: Path) -> None:
    from steps.fs import chown_tree

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "f").write_text("x")
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "file").write_text("y")
    os.symlink(victim, tree / "d" / "dirlink")
    os.symlink(victim / "f", tree / "filelink")
    before = (_state(victim), _state(victim / "f"))
    chown_tree(tree, 4242, 4242)
    assert (_state(victim), _state(victim / "f")) == before
    assert {os.lstat(p).st_uid for p in [tree, *tree.rglob("*")]} == {4242}  # the links themselves too
    os.symlink(victim, tmp_path / "toplink")
    with pytest.raises(UnsafePath, match="symlink"):
        chown_tree(tmp_path / "toplink", 4242, 4242)
    assert (_state(victim), _state(victim / "f")) == before


def test_empty_subdir_removes_links_not_their_targets_and_refuses_a_linked_directory(tmp_path: Path) -> None:
    from steps.fs import empty_subdir

    victim = tmp_path / "victim"
    (victim / "inner").mkdir(parents=True)
    (victim / "f").write_text("x")
    top = tmp_path / "top"
    wal = top / "pg_wal"
    (wal / "archive_status").mkdir(parents=True)
    (wal / "000000010000000000000001").write_text("seg")
    (wal / "sub").mkdir()
    os.symlink(victim, wal / "sub" / "link")
    os.symlink(victim, wal / "link")
    with open_dir(top) as fd:
        empty_subdir(fd, "pg_wal", keep=("archive_status",))
    assert sorted(p.name for p in wal.iterdir()) == ["archive_status"]
    assert sorted(p.name for p in victim.iterdir()) == ["f", "inner"]
    os.symlink(victim, top / "linked")
    with open_dir(top) as fd, pytest.raises(UnsafePath, match="not a plain directory"):
        empty_subdir(fd, "linked")
    assert sorted(p.name for p in victim.iterdir()) == ["f", "inner"]


def test_open_subdir_creates_private_directories_and_refuses_links(tmp_path: Path) -> None:
    from steps.fs import open_subdir

    os.symlink(tmp_path, tmp_path / "loop")
    with open_dir(tmp_path) as fd:
        sub = open_subdir(fd, "x/y", create=True)
        os.close(sub)
        with pytest.raises(UnsafePath):
            open_subdir(fd, "loop/x", create=True)
        with pytest.raises(UnsafePath):
            open_subdir(fd, "../x")
    assert oct((tmp_path / "x" / "y").stat().st_mode & 0o777) == "0o700"


def test_read_plain_text_never_reads_through_a_link(tmp_path: Path) -> None:
    from steps.fs import read_plain_text

    (tmp_path / "secret").write_text("root:$6$hash\n")
    os.symlink(tmp_path / "secret", tmp_path / "server.log")
    with pytest.raises(UnsafePath, match="never followed"):
        read_plain_text(tmp_path / "server.log")
    assert read_plain_text(tmp_path / "missing", missing="") == ""
    (tmp_path / "real.log").write_text("LOG:  ok\n")
    assert read_plain_text(tmp_path / "real.log") == "LOG:  ok\n"
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UnsafePath, match="not a regular file"):
        read_plain_text(tmp_path / "fifo")
