"""Offline tools over recorded and simulated streams: readers of JSONL, CSV and TSV, recording
from Kafka, replay, the seeded simulator and its click model, and the state verifier."""
