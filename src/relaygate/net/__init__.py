"""Outbound network policy: which addresses a user-supplied URL may reach."""
