"""The worker side: the loop every backend runs (``python -m cloudburst.worker``), its supervisor,
its memory limit, and the no-build bootstrap."""
