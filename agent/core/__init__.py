"""Pure, synchronous decision logic. Nothing here imports asyncio, nats or structlog (a test enforces it)."""
