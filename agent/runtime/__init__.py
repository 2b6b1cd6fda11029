"""Actor runtime: clocks, actor bases, the supervisor, metrics and their HTTP endpoint, logging, the embedded
nats-server, and how a process connects to NATS and shuts down (the node sidecar's too: nothing here loads
the planning core)."""
