"""Canonical types shared by every inbound API and provider adapter."""
