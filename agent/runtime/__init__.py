"""Actor runtime: clocks, actor bases, the supervisor, metrics, logging and the embedded nats-server."""
