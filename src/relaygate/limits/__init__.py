"""Limits: request rates, quotas, token reservations and concurrency, exact across processes."""
