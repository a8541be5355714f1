"""What Ray runs: the router deployment (router.py, a shell around jobs.engine), the generator
deployment (generator.py) with its pipeline run (generation.py), LoRA activation
(lora_adapters.py), fit plans shared with the router (fit_plans.py), the generators' deployment
states (replica_status.py) and fault injection (faults.py). Depends on jobs, media, webhooks and
model_store, never on serve_app."""
