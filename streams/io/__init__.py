"""Moving events: the transport protocols, Kafka and the in-process bus, the producer SDK,
dead letters, and the item tail that keeps serving's index replica."""
