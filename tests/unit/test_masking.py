"""What a secret is, and how it is masked: names are shown, short secrets are refused, quoted and
JSON-escaped forms are masked too, and the journal masks values, never its keys."""

from __future__ import annotations

import json
import os
import shlex
from datetime import UTC, datetime
from pathlib import Path

import pytest

from runbook.clock import FrozenClock
from runbook.errors import SecretsError
from runbook.journal import Journal, read_journal
from runbook.model import Param, Secrets
from runbook.params import coerce
from runbook.redact import MASK, Redactor, StreamRedactor
from runbook.secrets import is_public_key, load_secrets

QUOTY = """Pa'ss"w0rd\\x-1"""  # a single quote, a double quote and a backslash


def _env(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "db.env"
    p.write_text(text)
    os.chmod(p, 0o600)
    return p


# --- what a secret is ---------------------------------------------------------------------------


def test_user_names_hosts_ports_and_database_names_are_not_secret(tmp_path: Path) -> None:
    p = _env(tmp_path, "DB_HOST=db1\nDB_PORT=5433\nDB_USER=postgres\nDB_NAME=assetflow_prod\n"
                       "REPLICATION_USER=replicator\nPGDATABASE=assetflow\nDB_PASSWORD=Sup3r-S3cret\n"
                       "API_TOKEN=tok-0123456789\n")
    s = load_secrets(Secrets(env_file=str(p)), tmp_path)
    assert s.redact == ["tok-0123456789", "Sup3r-S3cret"]
    assert s.env["PGUSER"] == "postgres"


@pytest.mark.parametrize("key", ["DB_USER", "DB_HOST", "DB_PORT", "DB_NAME", "APP_DB", "PGUSER", "PGHOST",
                                 "PGPORT", "PGDATABASE", "S3_BUCKET_NAME", "BACKUP_USERNAME"])
def test_public_names(key: str) -> None:
    assert is_public_key(key, Secrets(env_file="x"))


@pytest.mark.parametrize("key", ["DB_PASSWORD", "PGPASSWORD", "API_TOKEN", "AWS_SECRET_ACCESS_KEY", "DATABASE_URL",
                                 "NOTIFY_WEBHOOK_URL", "DB_USER_PASSWORD"])
def test_secret_names(key: str) -> None:
    assert not is_public_key(key, Secrets(env_file="x"))


def test_a_name_can_be_declared_secret_and_any_key_public(tmp_path: Path) -> None:
    p = _env(tmp_path, "DB_USER=alice-the-admin\nSITE_LABEL=abc\n")
    s = load_secrets(Secrets(env_file=str(p), secret=["DB_USER"], public=["SITE_LABEL"]), tmp_path)
    assert s.redact == ["alice-the-admin"]


def test_a_url_with_credentials_is_secret_whatever_its_name(tmp_path: Path) -> None:
    p = _env(tmp_path, "DB_HOST=postgres://app:Sup3r-S3cret@db1/app\n")
    s = load_secrets(Secrets(env_file=str(p)), tmp_path)
    assert s.redact == ["postgres://app:Sup3r-S3cret@db1/app"]


# --- a short secret is refused ------------------------------------------------------------------


def test_a_secret_of_one_character_is_refused_naming_the_key_not_the_value(tmp_path: Path) -> None:
    p = _env(tmp_path, "DB_USER=postgres\nDB_PASSWORD=Q\n")
    with pytest.raises(SecretsError) as err:
        load_secrets(Secrets(env_file=str(p)), tmp_path)
    text = str(err.value)
    assert "DB_PASSWORD" in text and "8 characters" in text
    assert "=Q" not in text and "'Q'" not in text and "postgres" not in text
    assert err.value.hint and "public" in err.value.hint


def test_an_empty_value_is_no_secret_and_is_accepted(tmp_path: Path) -> None:
    p = _env(tmp_path, "DB_PASSWORD=\n")
    assert load_secrets(Secrets(env_file=str(p)), tmp_path).redact == []


def test_a_short_secret_param_is_refused() -> None:
    with pytest.raises(ValueError) as err:
        coerce("api_token", Param.model_validate({"secret": True}), "abc")
    assert 'param "api_token"' in str(err.value) and "8 characters" in str(err.value)
    assert "abc" not in str(err.value)
    assert coerce("api_token", Param.model_validate({"secret": True}), "abcdefgh") == "abcdefgh"


# --- quoted and escaped forms -------------------------------------------------------------------


def test_shell_quoted_and_json_forms_of_a_secret_are_masked() -> None:
    r = Redactor([QUOTY])
    for form in (QUOTY, shlex.quote(QUOTY), json.dumps(QUOTY), json.dumps(QUOTY, ensure_ascii=False),
                 f"echo {shlex.quote(QUOTY)}", shlex.quote("prefix " + QUOTY + " suffix"),
                 json.dumps({"pw": "x" + QUOTY})):
        out = r.redact(form)
        assert MASK in out, form
        for piece in ("Pa", "ss", "w0rd"):
            assert piece not in out, (form, out)
    assert r.secrets == (QUOTY,)  # what the supervisor is given: the values, not their forms


def test_a_stream_masks_the_quoted_form_split_across_reads() -> None:
    text = f"args: {json.dumps({'password': QUOTY})}\n"
    s = StreamRedactor(Redactor([QUOTY]))
    out = "".join(s.feed(text[i:i + 3]) for i in range(0, len(text), 3)) + s.flush()
    assert out == Redactor([QUOTY]).redact(text) and "w0rd" not in out


# --- the journal masks values, never keys -------------------------------------------------------


def test_a_secret_equal_to_a_journal_key_leaves_the_journal_intact(tmp_path: Path) -> None:
    p = tmp_path / "journal.jsonl"
    j = Journal(p, FrozenClock(datetime(2026, 11, 25, 3, 0, tzinfo=UTC)), Redactor(["incident_start"]))
    j.append("run-started", incident_start="2026-11-25T03:00:00+00:00", params={"incident_start": "x"},
             text="the password is incident_start")
    j.append("note", text="incident_start")
    j.close()
    events = read_journal(p).events  # parses and verifies its hash chain
    assert events[0]["incident_start"] == "2026-11-25T03:00:00+00:00"
    assert events[0]["params"] == {"incident_start": "x"}
    assert events[0]["text"] == f"the password is {MASK}" and events[1]["text"] == MASK
    assert "incident_start" not in json.dumps([e.get("text") for e in events])
