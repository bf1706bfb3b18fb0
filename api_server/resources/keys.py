"""The region's public signing keys, for data servers that fetch them over HTTP."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api_server.resource_layer.operations import Operations
from shared import openapi as oa
from shared.signing_keys import jwks, load_public_keys
from shared.web.operations import PUBLIC

OPERATIONS = Operations(
    "Keys",
    "The region's public signing keys, for data servers that verify data tokens.",
    schemas={
        "Jwks": oa.obj(
            {
                "keys": oa.array(
                    oa.obj(
                        {
                            "kty": oa.const("OKP"),
                            "crv": oa.const("Ed25519"),
                            "alg": oa.const("EdDSA"),
                            "use": oa.const("sig"),
                            "kid": oa.string(),
                            "x": oa.string("The public key, base64url."),
                        },
                        ["kty", "crv", "kid", "x"],
                        closed=False,
                    )
                )
            },
            ["keys"],
            "A JSON Web Key Set of Ed25519 public keys.",
        )
    },
)


@OPERATIONS.get(
    "/.well-known/jwks.json",
    operation_id="listPublicKeys",
    summary="Public signing keys",
    description="Every public key still published (a rotated-out key stays until its overlap "
    "ends); cacheable for 60 s. Data servers with `DATAFERRY_JWKS_URL` read it.",
    security=PUBLIC,
    produces=oa.JSON_MEDIA_TYPE,
    responses={"200": oa.response("The key set.", oa.ref("Jwks"), oa.JSON_MEDIA_TYPE)},
)
async def jwks_document(request: Request) -> Response:
    """Public keys only; every key still published (a rotated-out key stays until its overlap ends)."""
    keys = await run_in_threadpool(load_public_keys, request.app.state.settings)
    return JSONResponse(jwks(keys), headers={"Cache-Control": "public, max-age=60"})
