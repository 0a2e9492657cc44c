"""Backups in an encrypted repository: the glue between the store layer (steps.repository, which knows no
cipher) and the age core (steps.crypto: keys, epochs, the streaming cipher).

- steps.encrypted.writing: the backup host's side. Which repositories encrypt (`encrypt:` of `local`/`s3`), the
  epoch's data recipient each one writes to (steps.crypto.epochs.writer_key: only a public key on this host),
  an upload stream that encrypts as it goes and hashes the ciphertext it sends (`SealedStream`), and the file
  encryption `steps.repository.publish.store_objects` calls.
- steps.encrypted.reading: the reading host's side. Its identities (`encryption.identity_files`) opened into a
  `KeyRing`; for each object of an encrypted copy, the `Decoding` the store layer streams it through: the stored
  sha256 first, then age's authentication, then the plaintext sha256.

Kept out of steps.repository because steps.crypto builds on it (epochs are objects of a repository): the
store layer takes the cipher as a parameter instead (steps.repository.store.Decoding, the `encrypt` callable of
store_objects).
"""
