"""Who signed, and may we believe them: signing, verification, the XMLDSig core, signature
structure, the trust store, certificate bindings, the key policy, the caller identity.
"""
