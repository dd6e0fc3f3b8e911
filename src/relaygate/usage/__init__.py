"""Usage accounting: exactly one record per admitted request, durable before it is written."""
