"""The HTTP edge: the FastAPI app, the client-certificate authenticator, the TLS server,
worker processes.
"""
