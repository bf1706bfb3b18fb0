"""The bounds of one HTTP request's head that both servers keep (shared/web/http_limits.py
enforces them) and their API description states (shared/openapi.py): declared here, free of
any web framework, so that both read the same numbers."""

MAX_HEADER_BYTES = 32 * 1024
# The request target (path plus query): no route needs more than a few hundred bytes. The
# protocol refuses a longer one as it is read, the middleware one an app is given by other means.
MAX_REQUEST_TARGET_BYTES = 16 * 1024
# Requests read ahead of their answers on one connection (HTTP/1.1 pipelining, which no browser
# and no current curl uses); past it the connection closes once those are answered. Each waits
# as Python objects, its fields included: at 32, 500 connections held 241 MB (outside probe).
MAX_PIPELINED_REQUESTS = 8
# Header fields of one request (or trailer fields of its body); Apache's default. Each is kept as
# Python objects, about twenty times its bytes: without it 32 KiB of ``a:b`` lines took 760 KB.
MAX_HEADER_FIELDS = 100
