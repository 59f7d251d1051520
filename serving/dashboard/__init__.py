"""The live dashboard: a read-only page fed by Server-Sent Events."""
