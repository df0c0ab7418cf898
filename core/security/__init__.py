"""Who may do what, and how much: API keys and JWTs (authn, keys, tokens), scopes, rate limits,
quotas on work in flight, tenants' own limits, and the audit trail.

Import the modules themselves: this package imports nothing, so that a command reading scope
names does not import prometheus_client before `inferq worker` has set its multiprocess folder.
"""
