"""What the tests share: throwaway PostgreSQL clusters, an S3 endpoint over HTTP, the server user's venv,
and helpers for backups, WAL and PITR. Fixtures are registered in tests/conftest.py or imported by modules."""
