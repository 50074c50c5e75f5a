"""What client and workers say to each other: messages, sealing, serialization, captured output."""
