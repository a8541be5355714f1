"""The variants API: GET /variants (what each deployed variant takes) and GET /v1/models (OpenAI's list)."""
