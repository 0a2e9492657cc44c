"""`runbook check` on a writer whose encryption.recipients still name a key the repository's encryption journal says
was revoked (`runbook keys revoke`): a warning naming the key and the repository; none once the config drops it;
a forged (unsigned) revocation planted in the journal is not believed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from steps.crypto.keys import create_identity_file
from tests.conftest import run_cli
from tests.support.backup_helpers import backup, cli_env, source_cluster, write_config  # noqa: F401
from tests.support.pgcluster import Cluster


def _config(path: Path, cluster: Cluster, repo: Path, recipients: list[str], identity: Path) -> Path:
    return write_config(path, cluster, dbs=["postgres"], state=path.parent / "state", extra=(
        f"local: {{path: {repo}, encrypt: true}}\n"
        f"encryption: {{recipients: [{', '.join(recipients)}], identity_files: [{identity}]}}\n"))


def _check(cfg: Path) -> tuple[int, dict[str, Any]]:
    r = run_cli("check", "-c", str(cfg), "--json", env=cli_env(), timeout=120)
    return r.returncode, {c["name"]: c for c in json.loads(r.stdout)["checks"]}


def test_check_warns_when_a_configured_recipient_was_revoked(source_cluster: Cluster,  # noqa: F811
                                                             tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    ops, _ = create_identity_file(keys / "ops.agekey")
    gone, _ = create_identity_file(keys / "gone.agekey")
    repo = tmp_path / "repo"
    writer = _config(tmp_path / "writer.yaml", source_cluster, repo, [ops.recipient, gone.recipient],
                     keys / "ops.agekey")
    done = backup(writer)
    assert done.returncode in (0, 1), done.stderr  # an epoch for both recipients, and a backup in it
    code, checks = _check(writer)
    assert not any(n.startswith("recipients") for n in checks), checks  # nothing revoked yet

    r = run_cli("keys", "revoke", "-c", str(writer), gone.recipient, "--yes", env=cli_env(), timeout=120)
    # exit 1: it warns that this very config still holds the key, as check will
    assert r.returncode == 1 and "1 epoch(s) re-wrapped without it" in r.stdout, r.stdout + r.stderr
    code, checks = _check(writer)
    c = checks["recipients:local"]
    assert c["status"] == "warning" and code >= 1
    assert f"encryption.recipients names {gone.recipient}, revoked in the encryption journal of" in c["detail"]
    assert str(repo) in c["detail"] and ops.recipient not in c["detail"]
    assert "remove it from encryption.recipients" in c["hint"]

    # the writer drops it: no warning (its next write starts a new epoch without it)
    fixed = _config(tmp_path / "fixed.yaml", source_cluster, repo, [ops.recipient], keys / "ops.agekey")
    _, checks = _check(fixed)
    assert "recipients:local" not in checks, checks["recipients:local"]

    # a revocation of the remaining key, planted unsigned by whoever can write the repository: not believed
    (journal,) = {p.parent for p in repo.glob("encryption/journal/*-revoke.json")}
    (journal / "29991231T000000.000000Z-revoke.json").write_text(json.dumps(
        {"format_version": 1, "action": "revoke", "epochs": ["20261207T000000Z-00000000"], "removed": [ops.recipient], "added": []}))
    _, checks = _check(fixed)
    assert "recipients:local" not in checks, checks["recipients:local"]
    # (the planted record is well formed: a host told to accept unsigned records believes it)
    r = run_cli("check", "-c", str(fixed), "--json", "--allow-unsigned", env=cli_env(), timeout=120)
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert f"encryption.recipients names {ops.recipient}, revoked" in checks["recipients:local"]["detail"]
