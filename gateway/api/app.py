"""The node's API (FastAPI): a thin edge over :mod:`gateway.node` and :mod:`gateway.network`,
assembled from one router per audience.

=======================================  =================================================
:mod:`gateway.api.agency`                an agency's DMS: documents, statuses, inbox, ack,
                                         status, evidence, directory
:mod:`gateway.api.relay`                 a neighbour node: relay batches
:mod:`gateway.api.admin`                 the node's operators: deliveries, requeue
:mod:`gateway.api.operations`            load balancers: ``/healthz``, ``/readyz``
:mod:`adapters.hub`                      DMS on the national SDK (``[hub] enabled``): the
                                         hub protocol under ``[hub] prefix`` (or on a
                                         listener of its own: :func:`create_hub_app`)
=======================================  =================================================

They share :mod:`gateway.api.edge` (the caller dependencies and the app's :class:`Edge`),
:mod:`gateway.api.lanes` (uploads' queues and CPU lanes), :mod:`gateway.api.bodies` and
:mod:`gateway.api.models`. Every refusal is JSON ``{code, message, detail}`` with the error's
HTTP status, every code from :mod:`gateway.errors` (:mod:`gateway.api.refusals`); a body is
never logged. Agencies authenticate with their client certificate (:mod:`gateway.api.auth`).

**Authenticate first.** No route declares a body parameter, so FastAPI never reads a body on
its own (it would, before any dependency runs); :func:`create_app` refuses to build an app where
one does. Each route takes the :class:`~starlette.requests.Request` and reads its body itself,
in its code, after its dependencies have authenticated the caller (``Caller``) and authorised it
(``Admin``: the node's own certificate; ``Neighbour``: this node's parent or a child). So an
anonymous or unauthorised caller is answered without a byte of its body read, whatever its size
or framing. JSON bodies are capped at ``[limits] max_json_bytes`` while they stream in and their
nesting at ``max_json_depth`` before they are parsed (:mod:`gateway.jsonsafe`).

**Nothing unexpected is a 500 with a traceback.** Every input path maps its failures to a
stable code; an exception that escapes anyway is logged (``api.internal_error``: type and place,
never the message, which may quote input) and answered ``INTERNAL_ERROR`` in the same shape
(:class:`~gateway.api.refusals.LastResort`).

Usage::

    app = create_app(node)
    # served by `gateway serve` (gateway.api.supervisor), or gateway.api.server.run(app, settings)

The route modules keep postponed annotations: FastAPI resolves them in each module's globals,
so every type a route signature names (``Request``, ``Caller``...) is imported at run time.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from adapters.hub.app import HubApp, HubOnly, HubPrefix
from gateway import __version__
from gateway.api import admin, agency, operations, relay
from gateway.api.edge import Edge
from gateway.api.models import ERROR_RESPONSES
from gateway.api.refusals import LastResort, install_refusals
from gateway.node.container import Node

__all__ = ["create_app", "create_hub_app"]


def create_app(node: Node) -> FastAPI:
    """The node's ASGI application.

    Usage: ``uvicorn.Server(make_config(create_app(node), node.settings)).run()``.

    It reads only ``node.name``, ``node.settings``, ``node.trust`` and ``node.on_trust_change``
    while it builds (the OpenAPI test builds one on a stand-in).
    """
    app = FastAPI(
        title=f"edXML gateway node {node.name}",
        version=__version__,
        description="Agency API: push signed edXML documents and statuses, pull your inbox.",
        responses=ERROR_RESPONSES,
    )
    app.state.edge = Edge.of_node(node)
    install_refusals(app)
    for router in (operations.router, agency.router, relay.router, admin.router):
        app.include_router(router)
    _refuse_body_parameters(app)
    app.add_middleware(LastResort)
    if node.settings.hub.enabled and node.settings.hub.port == 0:
        # outermost: a request under the hub prefix is the hub's, trio and all (adapters.hub)
        app.add_middleware(HubPrefix, hub=_hub(node, app.state.edge))
    return app


def create_hub_app(node: Node, app: FastAPI) -> HubOnly | None:
    """The ASGI app of the hub API's own listener (``[hub] port``), sharing ``app``'s upload
    lanes (same process, same CPU budget); None when the hub API has no listener of its own.

    Usage: ``server.make_hub_config(create_hub_app(node, app), settings)``
    """
    hub = node.settings.hub
    if not hub.enabled or hub.port == 0:
        return None
    return HubOnly(_hub(node, app.state.edge))


def _hub(node: Node, edge: Edge) -> HubApp:
    return HubApp(
        node,
        upload=lambda caller, read, work: edge.lanes.upload(caller, read=read, work=work),
        upload_limit=edge.upload_limit,
    )


def _refuse_body_parameters(app: FastAPI) -> None:
    """Fail at start-up if a route lets FastAPI read its body (before its dependencies)."""
    # routes of included routers are found through their contexts, not in app.routes
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute) and route.body_field is not None:
            raise TypeError(
                f"{route.path}: declare no body parameter; read the body in the route, after "
                "authentication (gateway.api.app docstring)"
            )
