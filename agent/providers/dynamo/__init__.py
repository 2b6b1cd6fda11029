"""NVIDIA Dynamo, seen from outside: the agent speaks its wire formats and never imports it.

- :mod:`agent.providers.dynamo.frontend_metrics`: a frontend's Prometheus text → a snapshot; two snapshots
  → the demand over the interval (arrivals, tokens, in flight, queued, latency percentiles, migrations).
- :mod:`agent.providers.dynamo.event_plane`: the event plane's msgpack envelope, ForwardPassMetrics and
  kv_metrics payloads, and the NATS subjects Dynamo publishes them on.

Both are pure (no I/O); the actor that scrapes and subscribes uses them. Written against Dynamo 1.6.1.
"""
