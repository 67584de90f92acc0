"""The TUI's widgets, one per file, grouped by the screen region they live in:
``chat/`` (conversation and prompt), ``sidebar/`` (threads) and ``run/`` (the live run view)."""
