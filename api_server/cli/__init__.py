"""The operator commands of ``python -m api_server``, one module per subject (organisations and
their keys; what file datasources read); api_server/__main__.py puts them into one parser."""
