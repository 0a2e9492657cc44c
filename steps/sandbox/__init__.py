"""The sandbox `runbook demo` builds: a PostgreSQL 15 primary with AssetFlow's sample data, a local
repository, a backup, and a disaster to recover from. Nothing here touches a configured production
repository or server.

- `build`: the sandbox itself (servers, repository, backups, the disaster).
- `assetflow`: the sample application's schema and data.
- `profile`: the sandbox's values for the runbook (`sandbox.profile.yaml`).
- `lock`: the sandbox is one operator's: its lock, and the runs that use it.
"""
