"""OpenAI's Images API (/v1/images/edits, /v1/images/generations) over the image variants' jobs."""
