"""The conversation region: the message log, one message, and the prompt input."""
