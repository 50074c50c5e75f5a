"""The worker side: the loop every backend runs (``python -m cloudburst.worker``), its supervisor,
and its memory limit. (The Fargate image's bootstrap, which runs before it, is ``backends.aws.bootstrap``.)"""
