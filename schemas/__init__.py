"""Wire contracts of cost-agent: msgspec Structs for every message on the bus.

The planning core (issue 2) exchanges no messages yet; the message types arrive with the agent on NATS.
"""
