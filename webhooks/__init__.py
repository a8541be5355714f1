"""Signed webhooks: the SSRF guard of webhook URLs (guard.py), the messages and their delivery
attempts (model.py, store.py), and the sender that signs, retries and records them (sender.py).

Depends on the job domain (``jobs``); the job domain does not know webhooks exist.
"""
