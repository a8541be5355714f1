"""OpenAI's Videos API (/v1/videos): routes (routes.py), protocol models in OpenAI's shapes
(protocol.py), serving logic (serving.py), over the same jobs as /generate."""
