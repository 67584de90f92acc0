"""Ready-made Maestro agents: assistant, researcher, analyst, MRKL router."""
