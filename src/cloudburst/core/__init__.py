"""The core: a job's tasks, how they are planned, sent, collected and retried, whatever the backend."""
