"""Adapters: the edges (peer transport, hub-compatible API, webhooks, drop folder)."""
