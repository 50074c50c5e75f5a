"""Settings: the options a user passes, checked, and the user's persisted configuration."""
