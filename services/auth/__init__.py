"""The auth service: users, passwords, access and refresh tokens, signing keys (``python -m services.auth``)."""
