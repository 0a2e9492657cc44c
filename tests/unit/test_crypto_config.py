"""The repository config's `encryption:` section and the `encrypt:` switches (steps.repository.config): every
mistake is refused naming its key, and where encryption applies by default."""

from __future__ import annotations

from pathlib import Path

import pytest

from runbook.errors import InvalidFile
from steps.crypto.age import generate_identity
from steps.crypto.epochs import recipients_from_config
from steps.crypto.errors import EncryptionError
from steps.repository.config import load_repository_config

_, R1 = generate_identity()


def _load(tmp_path: Path, body: str):  # type: ignore[no-untyped-def]
    cfg = tmp_path / "repo.yaml"
    cfg.write_text(f"version: 1\nlocal: {{path: {tmp_path / 'repo'}}}\n{body}")
    cfg.chmod(0o600)
    return load_repository_config(cfg)[0]


def test_s3_encrypts_by_default_once_recipients_are_set_and_local_only_when_asked(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "s3: {bucket: abc}\n")
    assert (cfg.encrypts("local"), cfg.encrypts("s3")) == (False, False)
    cfg = _load(tmp_path, f"s3: {{bucket: abc}}\nencryption: {{recipients: [{R1}]}}\n")
    assert (cfg.encrypts("local"), cfg.encrypts("s3")) == (False, True)
    cfg = _load(tmp_path, f"s3: {{bucket: abc, encrypt: false}}\nencryption: {{recipients: [{R1}]}}\n")
    assert cfg.encrypts("s3") is False
    cfg = _load(tmp_path, f"encryption: {{recipients: [{R1}]}}\n")
    assert cfg.encrypts("s3") is False  # no S3 repository at all
    cfg = tmp_path / "repo.yaml"
    cfg.write_text(f"version: 1\nlocal: {{path: {tmp_path / 'r'}, encrypt: true}}\nencryption: {{recipients: [{R1}]}}\n")
    cfg.chmod(0o600)
    assert load_repository_config(cfg)[0].encrypts("local") is True


@pytest.mark.parametrize(("body", "message"), [
    ("s3: {bucket: abc, encrypt: true}\n", "s3.encrypt is true but encryption.recipients is empty"),
    ("encryption: {recipients: [age1nope]}\n", r"encryption.recipients\[0\] 'age1nope' is neither an age public key"),
    ("encryption: {recipients: [AGE-SECRET-KEY-1QQQQ]}\n", r"encryption.recipients\[0\] is a private key"),
    ("encryption: {identity_files: [keys/restore.agekey]}\n", r"encryption.identity_files\[0\] must be an absolute"),
    ("encryption: {recipients: []}\nbogus: 1\n", "bogus"),
    ("encryption: {recipient: []}\n", "recipient"),
])
def test_a_mistake_is_refused_naming_its_key(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(InvalidFile, match=message) as e:
        _load(tmp_path, body)
    assert "AGE-SECRET-KEY-1QQQQ" not in str(e.value)


def test_local_encrypt_without_recipients_and_an_identity_inside_the_repository_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "repo.yaml"
    cfg.write_text(f"version: 1\nlocal: {{path: {tmp_path / 'repo'}, encrypt: true}}\n")
    cfg.chmod(0o600)
    with pytest.raises(InvalidFile, match="local.encrypt is true but encryption.recipients is empty"):
        load_repository_config(cfg)
    with pytest.raises(InvalidFile, match=r"encryption.identity_files\[0\] .* lies inside the local repository"):
        _load(tmp_path, f"encryption: {{identity_files: [{tmp_path / 'repo' / 'k.agekey'}]}}\n")


def test_recipient_files_are_read_when_used_and_a_checksum_typo_is_named(tmp_path: Path) -> None:
    _, r2 = generate_identity()
    (tmp_path / "ops.recipients").write_text(f"{r2}\n")
    cfg = _load(tmp_path, f"encryption: {{recipients: [{R1}, {tmp_path / 'ops.recipients'}]}}\n")
    assert recipients_from_config(cfg) == [R1, r2]
    typo = R1[:20] + ("q" if R1[20] != "q" else "p") + R1[21:]
    cfg = _load(tmp_path, f"encryption: {{recipients: [{typo}]}}\n")  # the shape is right: the config loads
    with pytest.raises(EncryptionError, match=r"encryption.recipients\[0\]: .*checksum"):
        recipients_from_config(cfg)
