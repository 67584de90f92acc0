"""The left sidebar: the list of conversation threads."""
