"""The calling key, as a client checks it."""

from __future__ import annotations

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response

from api_server import jsonapi, serializers
from api_server.auth import authenticate
from shared.db.models import ApiKey


@jsonapi.endpoint()
def show_calling_api_key(request: Request) -> Response:
    """Needs no permission: any valid key may see itself."""
    principal = authenticate(request)
    jsonapi.parse_collection_query(request, collection=False)
    with request.app.state.sessions() as session:
        key = session.scalars(select(ApiKey).where(ApiKey.id == principal.api_key_id)).one()
        return jsonapi.response({"data": serializers.api_key(key)})
