"""Container log pipeline: Docker stream codec (compiled, with a pure-Python twin) and backends."""
