"""Model store: the variant registry, pipeline loading and the tiny-weight builder.

This package knows about weights and diffusers pipelines; it knows nothing about
Ray Serve, HTTP or jobs.
"""
