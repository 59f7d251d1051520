"""The worker: a batch planner (screen, compute) run by a synchronous and a pipelined driver,
the processors it runs, and what keeps its effects exactly once (dedup, the catalog gate,
recovery from a store that lost effects)."""
