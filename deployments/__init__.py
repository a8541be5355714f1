"""Ray Serve deployments: the router (queue, backpressure, dispatch, progress) and the generator
(one replica per GPU, runs the diffusers pipeline). Depends on model_store, never on serve_app."""
