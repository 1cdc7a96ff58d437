"""A faithful fake of the balena API (cloud-api.md), as a server process with its data in SQLite."""
