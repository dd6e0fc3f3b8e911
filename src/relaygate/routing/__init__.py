"""Routing: which deployment serves a request, and what is tried when it fails."""
