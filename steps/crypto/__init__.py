"""Client-side encryption of what leaves the host (issue 17): the age format, the keys, the envelope.

- `age`: the age file format (X25519 recipients) written and read incrementally (`Encryptor`, `Decryptor`), whole
  bytes and files, recipients and identities loaded from the config;
- `epochs`: the envelope: a data key per epoch, wrapped to the configured recipients under `encryption/` in the
  repository, created by writers, opened by readers (`KeyRing`), re-wrapped by `rotate` and `revoke`;
- `errors`: `EncryptionError` and its children (no identity, altered ciphertext, refused epoch).

docs/encryption.md describes the format and the recovery by hand with the `age` command.
"""
