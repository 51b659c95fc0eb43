"""What a node can prove later: its own key, hop records, receipts, the hash-chained
audit log.
"""
