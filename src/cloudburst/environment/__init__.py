"""The environment workers need: a snapshot of this one, its wheels, and the pins of what cloudburst installs."""
