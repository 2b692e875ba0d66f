"""OpenTelemetry set-up for the entry points (the library itself uses only the API).

Configured by the standard variables: OTEL_TRACES_EXPORTER (otlp, console, none),
OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
OTEL_EXPORTER_OTLP_PROTOCOL (grpc or http/protobuf), OTEL_SERVICE_NAME, and the
SDK's own OTEL_BSP_* batching variables. With none of them set nothing is exported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

log = logging.getLogger("longline.telemetry")

# Long-lived or chatty RPCs that would make poor spans.
_UNTRACED_METHODS = ("Connect", "Check", "Watch", "ServerReflectionInfo")


def setup(default_service: str) -> Callable[[], None]:
    """Install a tracer provider and gRPC instrumentation if OTEL_* asks for it; returns
    the shutdown that flushes what is left (call it on the way out)."""
    kinds = [k.strip() for k in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if k.strip()]
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if "none" in kinds or (not kinds and not endpoint):
        return lambda: None
    from opentelemetry import trace
    from opentelemetry.instrumentation.grpc import (
        GrpcAioInstrumentorClient,
        GrpcAioInstrumentorServer,
        filters,
    )
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: default_service}
    provider = TracerProvider(resource=Resource.create(attributes))
    for kind in kinds or ["otlp"]:
        if kind == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif kind == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
        else:
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported here; ignored", kind)
    trace.set_tracer_provider(provider)
    untraced = filters.any_of(*(filters.method_name(m) for m in _UNTRACED_METHODS))
    GrpcAioInstrumentorServer(filter_=filters.negate(untraced)).instrument()
    GrpcAioInstrumentorClient(filter_=filters.negate(untraced)).instrument()
    log.info("tracing to %s", endpoint or kinds)
    return provider.shutdown


def _otlp_exporter():  # type: ignore[no-untyped-def]
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
    )
    if protocol.startswith("http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcExporter,
    )

    return GrpcExporter()
