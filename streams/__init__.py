"""The stream side of streamrec: events in, live state out.

- :mod:`streams.schema` and :mod:`streams.settings`: the event contract and the topics, used
  by every part;
- :mod:`streams.io`: transports (Kafka, the in-process bus), the producer SDK, dead letters,
  and the item tail that keeps serving's index replica;
- :mod:`streams.worker`: the worker that applies batches to the store exactly once (planner,
  drivers, processors, recovery);
- :mod:`streams.data`: the offline tools: file readers, recording, replay, the simulator and
  its click model, and the state verifier.

Imports flow one way: ``data`` → ``worker`` → ``io`` → the top-level modules.
"""
