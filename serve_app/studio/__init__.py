"""The web studio: plain HTML, CSS and JavaScript modules served by the ingress at ``/``."""
