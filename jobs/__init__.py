"""The job domain: what a job is (model.py), where it is kept (store.py), the per-variant FIFO
(queue.py), its progress events (events.py), ETAs (eta.py), failure handling (failures.py,
circuit_breaker.py), its inputs and result files (inputs.py, files.py, filenames.py), retention
(retention.py), and the engine that composes them (engine.py).

Plain Python: imports neither Ray nor FastAPI, so it is tested without a cluster. The router
deployment (deployments/router.py) is a thin Ray shell around ``JobEngine``.
"""
