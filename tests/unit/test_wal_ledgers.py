"""Signed WAL ledgers (steps.wal.ledger) without a server: sealing notes into signed ledgers, the verified index
built from them (forged, moved, unsigned and foreign ledgers refused by name), the index's bisection, and
wal-fetch's verdicts on a local repository: the signed bytes pass, replaced ones stop the recovery, an unsigned
tail ends it, a deleted signed file stops it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from steps.repository.layout import wal_key
from steps.repository.signing import SIG_SUFFIX, Trust, load_private_key, load_public_keys
from steps.wal.archive import EXIT_MISSING, FetchFailed, fetch_file, push_data
from steps.wal.fast import index_lookup, note_pushed, seal_root, signed_verdict
from steps.wal.ledger import Index, ledger_prefix, read_index, read_notes, seal, wal_order, write_index
from steps.wal.segment import pack
from steps.wal.settings import WalSettings
from steps.wal.store import LocalWal
from tests.support.signing import make_keys
from tests.unit.test_wal_units import MB, fake_segment

SYSID = 7123456789012345678


def segment(n: int) -> str:
    return f"00000001000000000000{n:04X}"


def signer_and_trust(tmp_path: Path, name: str = "wal") -> tuple[object, Trust]:
    private, public = make_keys(tmp_path, name)
    return load_private_key(private), Trust.of(load_public_keys([public]))


def archive(repo: Path, names: list[str]) -> dict[str, str]:
    """Push fake segments into a local repository; {name: sha256 of the original}."""
    store = LocalWal(repo)
    out = {}
    for n in names:
        data = fake_segment(SYSID, int(n[16:], 16))
        out[n] = str(push_data([store], n, data, SYSID, 1)["sha256"])
    return out


def test_notes_become_one_signed_ledger_that_verifies(tmp_path: Path) -> None:
    signer, trust = signer_and_trust(tmp_path)
    repo = tmp_path / "repo"
    shas = archive(repo, [segment(i) for i in range(1, 4)])
    notes = {n: (sha, MB) for n, sha in shas.items()} | {"00000002.history": ("a" * 64, 41)}
    key = seal([LocalWal(repo)], signer, SYSID, notes)  # type: ignore[arg-type]
    assert key.startswith(ledger_prefix(SYSID)) and (repo / (key + SIG_SUFFIX)).exists()
    first, last = key.rsplit("/", 1)[1].split("-")[:2]
    assert (first, last) == (wal_order(segment(1)), wal_order("00000002.history"))
    index = read_index([LocalWal(repo)], trust, SYSID)
    assert index.ledgers == 1 and not index.refused
    assert index.segments == {n: sha for n, (sha, _) in notes.items()}
    # ledgers that end before the base backup's first segment are not even read
    assert read_index([LocalWal(repo)], trust, SYSID, "00000003000000000000000A").segments == {}


def test_forged_moved_unsigned_and_foreign_ledgers_are_refused_by_name(tmp_path: Path) -> None:
    signer, trust = signer_and_trust(tmp_path)
    intruder, _ = signer_and_trust(tmp_path, "intruder")
    repo = tmp_path / "repo"
    store = LocalWal(repo)
    good = seal([store], signer, SYSID, {segment(1): ("1" * 64, MB)})  # type: ignore[arg-type]
    forged = seal([store], intruder, SYSID, {segment(2): ("2" * 64, MB)})  # type: ignore[arg-type]
    # a genuine ledger of another cluster copied under this one: its signature names the other place
    other = seal([store], signer, 42, {segment(3): ("3" * 64, MB)})  # type: ignore[arg-type]
    moved = ledger_prefix(SYSID) + other.rsplit("/", 1)[1]
    (repo / moved).write_bytes((repo / other).read_bytes())
    (repo / (moved + SIG_SUFFIX)).write_bytes((repo / (other + SIG_SUFFIX)).read_bytes())
    # a ledger with no signature at all
    unsigned = ledger_prefix(SYSID) + f"{segment(4)}-{segment(4)}-000000000000.json"
    (repo / unsigned).write_bytes((repo / good).read_bytes().replace(b"1111", b"4444"))
    index = read_index([store], trust, SYSID)
    assert index.segments == {segment(1): "1" * 64}
    refused = "\n".join(index.refused)
    assert f"{forged}: signed by key" in refused and "does not trust" in refused
    assert f"{moved}: the signature is for {other}" in refused
    assert f"{unsigned}: unsigned" in refused


def test_two_genuine_ledgers_that_disagree_drop_the_name(tmp_path: Path) -> None:
    signer, trust = signer_and_trust(tmp_path)
    store = LocalWal(tmp_path / "repo")
    seal([store], signer, SYSID, {segment(1): ("1" * 64, MB), segment(2): ("2" * 64, MB)})  # type: ignore[arg-type]
    seal([store], signer, SYSID, {segment(2): ("f" * 64, MB)})  # type: ignore[arg-type]
    index = read_index([store], trust, SYSID)
    assert index.segments == {segment(1): "1" * 64} and index.conflicts == [segment(2)]


def test_the_index_finds_every_name_by_bisection(tmp_path: Path) -> None:
    names = [segment(i) for i in range(1, 300)] + ["00000002.history", "00000003.history",
                                                     "000000010000000000000002.00000028.backup",
                                                     "000000010000000000000005.partial"]
    index = Index(segments={n: hashlib.sha256(n.encode()).hexdigest() for n in names})
    path = tmp_path / "index"
    write_index(path, index, accept_unsealed=False)
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    for n in names:
        assert index_lookup(str(path), n) == (index.segments[n], False, wal_order("00000003.history"))
    for absent in (segment(0), segment(300), "00000004.history", "000000010000000000000005"[:23] + "0"):
        assert index_lookup(str(path), absent)[0] is None
    assert signed_verdict(str(path), segment(7), index.segments[segment(7)]) == ("ok", None)
    kind, why = signed_verdict(str(path), segment(7), "0" * 64)
    assert kind == "refuse" and "replaced" in str(why)
    assert signed_verdict(str(path), "000000040000000000000001", "0" * 64)[0] == "end"  # after the newest
    path.write_text("garbage\n")
    assert signed_verdict(str(path), segment(7), "0" * 64)[0] == "refuse"


def settings_for(tmp_path: Path, repo: Path, wal_key_path: Path | None = None) -> WalSettings:
    data = {"local": {"path": str(repo)}, "wal": {"spool_dir": str(tmp_path / "spool"), "prefetch": 0}}
    if wal_key_path:
        data["signing"] = {"wal_private_key": str(wal_key_path)}
    return WalSettings(tmp_path / "repository.yaml", data)


def test_wal_fetch_hands_over_only_what_the_ledgers_sign(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    signer, trust = signer_and_trust(tmp_path)
    repo = tmp_path / "repo"
    shas = archive(repo, [segment(i) for i in range(1, 6)])
    store = LocalWal(repo)
    seal([store], signer, SYSID, {n: (shas[n], MB) for n in [segment(1), segment(2), segment(4)]})  # type: ignore[arg-type]
    index = read_index([store], trust, SYSID)
    path = tmp_path / "index"
    write_index(path, index, accept_unsealed=False)
    settings = settings_for(tmp_path, repo)
    dest = tmp_path / "pg_wal"
    dest.mkdir()

    def fetch(n: str, index_path: Path = path) -> int:
        return fetch_file(settings, n, str(dest / n), sysid=str(SYSID), verified=str(index_path))

    assert fetch(segment(1)) == 0 and hashlib.sha256((dest / segment(1)).read_bytes()).hexdigest() == shas[segment(1)]
    # segment 3 is unsigned between signed ones: planted or never sealed; the recovery stops (126)
    with pytest.raises(FetchFailed) as e:
        fetch(segment(3))
    assert "in no signed WAL ledger" in e.value.message and not (dest / segment(3)).exists()
    # segment 5 comes after the newest signed one: the archive ends there for this recovery, said on stderr
    assert fetch(segment(5)) == EXIT_MISSING and not (dest / segment(5)).exists()
    assert "after the newest signed file" in capsys.readouterr().err
    # a replaced segment (valid framing, other bytes): refused, never written
    other = fake_segment(SYSID, 2)
    blob, _ = pack(segment(2), other, system_identifier=SYSID, level=1)
    (repo / wal_key(str(SYSID), segment(2))).write_bytes(blob)
    with pytest.raises(FetchFailed) as e:
        fetch(segment(2))
    assert "not the file the WAL ledgers signed" in e.value.message and not (dest / segment(2)).exists()
    # a signed segment deleted from the repository is not "missing": the recovery stops rather than end early
    os.unlink(repo / wal_key(str(SYSID), segment(4)))
    with pytest.raises(FetchFailed) as e:
        fetch(segment(4))
    assert "deleted" in e.value.message
    # with allow_unsigned, the unsigned ones are handed over, with a warning
    lenient = tmp_path / "lenient"
    write_index(lenient, index, accept_unsealed=True)
    assert fetch(segment(3), lenient) == 0 and fetch(segment(5), lenient) == 0
    assert "accepted because the recovery allows unsigned WAL" in capsys.readouterr().err


def test_a_confirmed_push_is_noted_for_the_sealer_and_only_with_a_wal_key(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    plain = settings_for(tmp_path, repo)
    assert note_pushed(plain, SYSID, segment(1), "a" * 64, MB) is None
    assert not (tmp_path / "spool").exists()  # no WAL key: nothing noted, no sealer
    keyed = settings_for(tmp_path, repo, tmp_path / "missing.key")
    pending = Path(seal_root(keyed, SYSID)) / "pending"
    os.makedirs(pending, mode=0o700)
    (Path(seal_root(keyed, SYSID)) / "seal-worker.lock").touch()
    fd = os.open(Path(seal_root(keyed, SYSID)) / "seal-worker.lock", os.O_RDWR)
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX)  # a sealer "runs": none is started
    try:
        assert note_pushed(keyed, SYSID, segment(1), "a" * 64, MB) is None
    finally:
        os.close(fd)
    assert (pending / segment(1)).read_text() == f"{'a' * 64} {MB}\n"
    (pending / "not-a-wal-name").write_text("x")
    (pending / segment(2)).write_text("nonsense")
    assert read_notes(pending) == {segment(1): ("a" * 64, MB)}
    assert sorted(os.listdir(pending)) == [segment(1)]  # what is not a note is removed


def test_the_sealer_seals_the_notes_then_stops_when_idle(tmp_path: Path) -> None:
    from steps.wal.ledger import run_seal_worker

    private, public = make_keys(tmp_path, "wal")
    repo = tmp_path / "repo"
    settings = settings_for(tmp_path, repo, private)
    settings.worker_idle_s = 0.3
    pending = Path(seal_root(settings, SYSID)) / "pending"
    pending.mkdir(parents=True)
    shas = archive(repo, [segment(1), segment(2)])
    for n, sha in shas.items():
        (pending / n).write_text(f"{sha} {MB}\n")
    assert run_seal_worker(settings, SYSID) == 0
    assert not list(pending.iterdir())
    index = read_index([LocalWal(repo)], Trust.of(load_public_keys([public])), SYSID)
    assert index.segments == shas and index.ledgers == 1


def test_a_sealer_that_cannot_write_gives_up_and_keeps_the_notes(tmp_path: Path) -> None:
    from steps.wal.ledger import run_seal_worker

    private, _ = make_keys(tmp_path, "wal")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    settings = settings_for(tmp_path, blocker / "repo", private)
    settings.worker_idle_s = 1
    pending = Path(seal_root(settings, SYSID)) / "pending"
    pending.mkdir(parents=True)
    (pending / segment(1)).write_text(f"{'a' * 64} {MB}\n")
    assert run_seal_worker(settings, SYSID) == 1  # gave up, after about worker_idle_s
    assert (pending / segment(1)).exists()  # the note waits for the next sealer


def test_prune_deletes_only_the_ledgers_whose_every_file_it_deletes(tmp_path: Path) -> None:
    from steps.repository.prune import ledgers_to_delete
    from steps.repository.store import LocalStore

    signer, _ = signer_and_trust(tmp_path)
    repo = tmp_path / "repo"
    wal = LocalWal(repo)
    old = seal([wal], signer, SYSID, {segment(1): ("1" * 64, MB), segment(2): ("2" * 64, MB)})  # type: ignore[arg-type]
    straddles = seal([wal], signer, SYSID, {segment(4): ("4" * 64, MB), segment(5): ("5" * 64, MB)})  # type: ignore[arg-type]
    history = seal([wal], signer, SYSID, {"00000001.history": ("a" * 64, 40)})  # type: ignore[arg-type]
    # the oldest kept base backup starts at segment 5: 1, 2 and 4 go, 5 stays, history files always stay
    assert ledgers_to_delete(LocalStore(repo), str(SYSID), [(segment(5), MB)], MB) == [old]
    assert straddles and history
    assert ledgers_to_delete(LocalStore(repo), str(SYSID), [], MB) == []  # no kept base backup: nothing goes


def test_a_push_that_cannot_be_noted_for_sealing_is_not_confirmed(tmp_path: Path) -> None:
    from runbook.errors import RunbookError
    from steps.wal.archive import push_file

    blocker = tmp_path / "spool-is-a-file"
    blocker.write_text("x")
    repo = tmp_path / "repo"
    data = {"local": {"path": str(repo)}, "wal": {"spool_dir": str(blocker), "prefetch": 0},
            "signing": {"wal_private_key": str(tmp_path / "wal.key")}}
    settings = WalSettings(tmp_path / "repository.yaml", data)
    why = note_pushed(settings, SYSID, segment(1), "a" * 64, MB)
    assert why is not None and "not noted for sealing" in why and "wal.spool_dir" in why
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    (pg_wal / segment(1)).write_bytes(fake_segment(SYSID, 1))
    with pytest.raises(RunbookError) as e:
        push_file(settings, str(pg_wal / segment(1)), sysid=str(SYSID))
    assert "not confirmed" in e.value.message
    assert (repo / wal_key(str(SYSID), segment(1))).exists()  # stored: the retry finds it and notes it
