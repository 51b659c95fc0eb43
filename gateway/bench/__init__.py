"""Benchmarks that print figures: envelopes, one node, the network, hostile input, the hub API."""
