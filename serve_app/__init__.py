"""The HTTP ingress of wan-serve: each API's routes, protocol models and serving logic
(generate/, videos/), request bodies and upload checks, the one error mapping, the app builder
and the CLI."""
