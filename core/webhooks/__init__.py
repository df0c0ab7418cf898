"""Webhooks: tenants' signing secrets, the SSRF guard, and the delivery of job events."""
