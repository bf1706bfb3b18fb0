"""The Starlette and uvicorn side of ``shared``: declared operations, routes, middleware, error
handlers and server limits that both apps install.

Everything else in ``shared`` is framework-free, as are ``sql_templating``, the API server's
services and the data server's engine: ``tests/contract/test_layering.py`` keeps it so.
"""
