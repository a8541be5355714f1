"""The /generate API: routes (routes.py), protocol models (protocol.py), serving logic (serving.py)."""
