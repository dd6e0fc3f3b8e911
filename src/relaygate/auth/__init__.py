"""Authentication: API keys, JWTs and the Principal they resolve to."""
