"""API keys and signed download URLs: plain Python over the job store's database, no Ray, no HTTP."""
