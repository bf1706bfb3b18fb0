"""Cluvio SQL templating: a query's text plus Run Execution's ``parameters`` → the SQL DuckDB runs
plus the values bound to its ``$n`` parameters.

Framework-free (no web framework, no database session), so the API server, tests and tools use it
alike. The steps, each a module: ``scanning`` tells code from literals and comments;
``snippets`` expands ``[name]`` references through a lookup function the caller provides;
``parameters`` checks the client's parameters; ``placeholders`` finds the ``{…}`` placeholders
and ``binding`` renders each into fixed SQL around ``$n`` parameters. docs/sql-parameters.md
describes the forms for users.
"""
