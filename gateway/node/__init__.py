"""The node's services: the Node container, ingest, the inbox, timelines and their status
rules, admin actions, readiness.
"""
