"""pgBackRest as the physical engine: settings from the repository config, the runner of its commands, its info
JSON read into the product's facts, and the engine (steps.engines.pgbackrest.engine). docs/pgbackrest.md."""
