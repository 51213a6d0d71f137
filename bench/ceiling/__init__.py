"""
The ceiling: a minimal Django REST framework project of its own, beside AgentIdP and not inside it.

One DRF view (no authentication, the JSON renderer) reads one row by primary key from a table
in its own database on the benchmark's PostgreSQL and returns a tiny JSON body. Served by the
same gunicorn shape as AgentIdP with persistent connections, it is the least a DRF request that
reads the database costs here; the token endpoint's requests per second divided by its says how
close AgentIdP comes (bench/README.md).
"""
