"""Real edges of the agent: code that talks to clouds and serving stacks.

- :mod:`agent.providers.metadata`: cloud metadata answers → preemption notices (pure parsing).
- :mod:`agent.providers.sidecar`: ``cost-agent sidecar``, the node sidecar that polls the metadata
  service and publishes :class:`schemas.PreemptionNotice` on NATS.
- :mod:`agent.providers.httpclient`: HTTP requests on aiohttp, where anything but a complete answer in time
  means the service is down.
"""
