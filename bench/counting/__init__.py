"""
AgentIdP with per-request counting, for the token benchmark's short diagnostic pass only.

The server that is measured runs AgentIdP's own settings; this one, started afterwards with
one worker, adds a middleware that reports each request's SQL statements and bcrypt
verifications in response headers, so that the report can say what each scenario's
requests cost without that middleware running in the measured windows.
"""
