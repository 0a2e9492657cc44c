"""The journal's mirror in the repository: how a watcher on another host follows a run (issue 18).

While a live or drill run is driven with a repository config (the runbook's `repository:`, as for the recovery
lock and the run summary), a thread of the driver's process copies the journal's new lines into every
repository of that config (encrypted where the repository encrypts), and rewrites a heartbeat:

```
runs/<run id>/journal/<chunk>-<first seq>-<last seq>.jsonl   the journal's lines first..last, byte for byte
                                                            (write-once; chunk numbers 000001, 000002, ...)
runs/<run id>/live.json                                      driver (user, host, pid), last seq, chunks,
                                                            heartbeat time, state: running | detached | ended
runs/<run id>/runbook.yaml                                   the run directory's copy of its runbook, written once
                                                            before the first chunk (run-started journals its sha256)
```

Each object is signed like a run summary (`.sig` beside it, the host's signing.private_key). The journal holds
no secret (its redactor masks every value before a line is written), so the mirror carries exactly what the
journal carries (step ids and titles, commands with secrets masked, named outputs of actions, checks, notes,
warnings), plus the run's runbook copy as its author wrote it (templates, no secret's value). A step's raw output (stdout/stderr, in the run directory's step files) is not journaled and not
mirrored. Into a repository that encrypts (`encrypt: true`) each chunk is age-encrypted to the epoch the backups
there use (steps.encrypted.writing.sealing_for, as a backup writer gets it) and named
`<chunk>-<first>-<last>.<epoch>.jsonl.age`; the signature is over the stored (encrypted) bytes, and a watcher
opens the epoch with its identities (steps.encrypted.reading.Keys). live.json stays in clear, like a manifest.

- steps.mirror.layout: the keys above, and the limits a reader holds a chunk to.
- steps.mirror.writing: `JournalMirror`, the driver's thread.
- steps.mirror.reading: `MirrorReader`, what a watcher reads: chunks after the last one seen, each verified
  (signature, name, hash chain) before any event is returned; live.json, verified; the runbook copy, verified
  (signature, and its sha256 against the one run-started journaled).
- steps.mirror.requests: a hand-over across hosts (`runbook take-over -c`): the signed take-over requests in
  `runs/<run id>/requests/` the driver's mirror thread reads, and the new driver's write-once claim
  `runs/<run id>/drivers/<seq>.json`.
"""
