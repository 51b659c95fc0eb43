"""Development tooling, never imported by a running node: the dev PKI, devnet, the demo,
sample and hostile packages.
"""
