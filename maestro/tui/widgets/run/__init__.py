"""The live run region: plan tree, tool calls, requirements, budget and model status."""
