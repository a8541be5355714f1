"""HTTP ingress of wan-serve: FastAPI routes, request/response schemas and the app builder."""
