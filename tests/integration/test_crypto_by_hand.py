"""docs/encryption.md, "By hand, with age and the PostgreSQL tools alone": the shell block of that section, run as
it is written (bash, the `age` and `age-keygen` commands, coreutils) on objects steps.crypto wrote into a
repository through a writer's epoch, after a rotation added a second recipient, opened with that one's identity.

`by_hand_commands()` gives the block; tests of the restore paths (a whole backup through pg_restore, one WAL
segment through zstd) run it the same way on what they wrote."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

from steps.crypto.age import CHUNK, encrypt_file, load_identities
from steps.crypto.epochs import KeyRing, rotate, writer_key
from steps.repository.signing import Trust, load_private_key, load_public_keys
from steps.repository.store import LocalStore
from tests.support.signing import make_keys

DOC = Path(__file__).resolve().parents[2] / "docs" / "encryption.md"


def by_hand_commands() -> str:
    """The ```sh block of the "By hand" section of docs/encryption.md."""
    text = DOC.read_text()
    section = text[text.index("## By hand, with age and the PostgreSQL tools alone"):]
    m = re.search(r"```sh\n(.*?)```", section, re.S)
    assert m, "docs/encryption.md: no sh block in the By hand section"
    return m.group(1)


def run_by_hand(repo: Path, key: Path, epoch: str, obj: str, work: Path) -> subprocess.CompletedProcess[str]:
    """The block, in bash with -eu and pipefail, the way the doc's variables say."""
    assert shutil.which("age") and shutil.which("age-keygen"), "the age package is missing: scripts/setup.sh"
    work.mkdir(mode=0o700, exist_ok=True)
    env = {"PATH": os.environ["PATH"], "REPO": str(repo), "KEY": str(key), "EPOCH": epoch, "OBJECT": obj,
           "WORK": str(work), "LC_ALL": "C"}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", by_hand_commands()], env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_by_hand_recovery_of_the_docs_opens_objects_runbook_encrypted(tmp_path: Path) -> None:
    priv, pub = make_keys(tmp_path / "sign")
    signer, trust = load_private_key(priv), Trust.of(load_public_keys([pub]))
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("ops", "offline"):
        subprocess.run(["age-keygen", "-o", str(keys / f"{name}.agekey")], check=True, capture_output=True)
    ops_r, offline_r = (subprocess.run(["age-keygen", "-y", str(keys / f"{n}.agekey")], check=True,
                                       capture_output=True, text=True).stdout.strip() for n in ("ops", "offline"))
    repo = LocalStore(tmp_path / "repo")
    repo.check_access()
    wk = writer_key(repo, [ops_r], tmp_path / "state", signer)
    plain = {"globals.sql": b"CREATE ROLE app LOGIN PASSWORD 'SCRAM-SHA-256$4096:...';\n",
             "dump/toc.dat": os.urandom(3 * CHUNK + 4321)}
    base = "clusters/7000000000000000001/logical/app/20261207T030000Z/"
    for name, data in plain.items():
        (tmp_path / "p").write_bytes(data)
        encrypt_file(tmp_path / "p", tmp_path / "c", wk.data_recipient)
        repo.put_file(base + name + ".age", tmp_path / "c")
    # the offline key is added later by rotation: the newest wrap is the one it opens
    rotate(repo, KeyRing(load_identities([keys / "ops.agekey"]), trust), [offline_r], signer)

    for key in (keys / "offline.agekey", keys / "ops.agekey"):
        for name, data in plain.items():
            work = tmp_path / f"work-{key.stem}-{name.replace('/', '-')}"
            r = run_by_hand(repo.root, key, wk.epoch, base + name + ".age", work)
            assert r.returncode == 0, r.stderr
            first, second = r.stdout.split()
            assert first == second == wk.data_recipient  # step 2: the two lines are equal
            out = work / Path(name).name
            assert out.read_bytes() == data
            assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
            assert (work / "data.key").stat().st_mode & 0o777 == 0o600  # the umask of the doc


def test_by_hand_with_a_key_the_epoch_is_not_wrapped_for_fails_at_the_first_step(tmp_path: Path) -> None:
    priv, _ = make_keys(tmp_path / "sign")
    for name in ("ops", "stranger"):
        subprocess.run(["age-keygen", "-o", str(tmp_path / f"{name}.agekey")], check=True, capture_output=True)
    ops_r = subprocess.run(["age-keygen", "-y", str(tmp_path / "ops.agekey")], check=True, capture_output=True,
                           text=True).stdout.strip()
    repo = LocalStore(tmp_path / "repo")
    repo.check_access()
    wk = writer_key(repo, [ops_r], tmp_path / "state", load_private_key(priv))
    (tmp_path / "p").write_bytes(b"x")
    encrypt_file(tmp_path / "p", tmp_path / "c", wk.data_recipient)
    repo.put_file("x.age", tmp_path / "c")
    r = run_by_hand(repo.root, tmp_path / "stranger.agekey", wk.epoch, "x.age", tmp_path / "work")
    assert r.returncode != 0 and not (tmp_path / "work" / "x").exists()
