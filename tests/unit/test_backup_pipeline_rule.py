"""The rule that tells a file pg_dump has finished (steps.backup.pipeline.FinishedFiles): listed at the previous
poll, and open in no process of the dump (the process and its descendants, as pg_dump's forked workers)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from steps.backup.pipeline import FinishedFiles

# A "pg_dump" whose worker (a grandchild) holds a file open until told, as pg_dump -j's workers do.
WRITER = textwrap.dedent("""
    import subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", '''
    import sys
    f = open(sys.argv[1], "wb")
    f.write(b"x" * 1000)
    f.flush()
    print("open", flush=True)
    sys.stdin.readline()
    f.close()
    print("closed", flush=True)
    sys.stdin.readline()
    ''', sys.argv[1]], stdin=sys.stdin, stdout=sys.stdout)
    child.wait()
""")


def test_a_file_held_open_by_a_worker_is_not_finished_until_closed(tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    dump.mkdir()
    (dump / "toc.dat").write_bytes(b"written and closed")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(dump / "1234.dat.gz")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "open"
        files = FinishedFiles(dump, proc.pid)
        assert files.poll() == []  # the first poll only lists: nothing was listed before it
        assert files.poll() == ["toc.dat"]  # closed; 1234.dat.gz is open in the worker
        assert files.poll() == []
        (dump / "late.dat.gz").write_bytes(b"closed at once")
        assert files.poll() == []  # not listed at the previous poll: not yet
        assert files.poll() == ["late.dat.gz"]
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "closed"
        assert files.poll() == ["1234.dat.gz"]  # the worker still lives, the file is closed
        assert files.poll() == []  # each file is handed out once
        (dump / "after.dat.gz").write_bytes(b"x")
        assert files.rest() == ["after.dat.gz"]  # once pg_dump exited, whatever is left
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()


def test_nothing_is_finished_while_the_process_holds_it_and_lives(tmp_path: Path) -> None:
    """The same rule with the file held by the watched process itself (pg_dump -j1 writes its own files)."""
    dump = tmp_path / "dump"
    dump.mkdir()
    code = "import sys; f = open(sys.argv[1], 'wb'); print('open', flush=True); sys.stdin.readline()"
    proc = subprocess.Popen([sys.executable, "-c", code, str(dump / "1.dat")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "open"
        files = FinishedFiles(dump, proc.pid)
        for _ in range(3):
            assert files.poll() == []
    finally:
        proc.kill()
        proc.wait()
    assert files.poll() == ["1.dat"]  # killed: its descriptors are closed
