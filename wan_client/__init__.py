"""The wan-serve client: the HTTP API from Python and the ``wan-serve generate`` / ``jobs`` /
``server`` commands. Plain httpx; imports nothing of the server (no Ray, no models), so it runs
on any machine that can reach the service."""
