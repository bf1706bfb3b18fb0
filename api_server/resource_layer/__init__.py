"""Declare each resource and operation once; routes, OpenAPI, permissions and audit derive from it.

``resource_types.ResourceType`` declares a JSON:API type (one attributes model, relationships, what a
collection sorts and filters by); ``operations.Operations`` declares each operation (route,
permission, audit action, documentation) next to its thin handler. ``api_server.routes``,
``api_server.openapi``, ``api_server.audit`` and the authorisation-matrix test read both.
"""
