"""Users' own provider keys (BYOK): encryption at rest, storage, provider choice."""
