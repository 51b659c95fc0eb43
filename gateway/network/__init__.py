"""Between nodes: routing, the relay wire format, relay receive, the outbox, the
dispatcher, notices, the scheduler.
"""
