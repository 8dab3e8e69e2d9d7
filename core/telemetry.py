"""Calls to Graph, Key Vault, Tables, DevOps and Event Grid as Application Insights dependencies.

The Azure Monitor OpenTelemetry distro traces the Azure SDKs (Key Vault, Tables, Event Grid,
identity) through azure-core and httpx (Graph through kiota, DevOps), and exports spans with the
broker's managed identity (the component's local auth is off). It costs about 0.5 s to import
and 1 s to configure (docs/ARCHITECTURE.md, "Telemetry"), so neither the worker's start nor a
request waits for it: the first use of an Azure client or the first job run starts it on a
background thread, and only where Application Insights is configured. Logs and metrics stay
with the Functions host (exporting logs too would count every BROKER_EVENT line twice).
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("broker.telemetry")

_lock = threading.Lock()
_started = False
configured = threading.Event()


def start() -> bool:
    """Configure tracing once, in the background; True if this call started it."""
    global _started
    if _started or not os.environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING"):
        return False
    with _lock:
        if _started:
            return False
        _started = True
    threading.Thread(target=configure, name="broker-telemetry", daemon=True).start()
    return True


def configure() -> None:
    """Set up the distro for dependency tracing (never raises: telemetry must not stop the app)."""
    try:
        from azure.identity import DefaultAzureCredential
        from azure.monitor.opentelemetry import configure_azure_monitor

        from core.settings import get_settings

        credential = DefaultAzureCredential(
            managed_identity_client_id=get_settings().azure_client_id,
            exclude_interactive_browser_credential=True,
        )
        configure_azure_monitor(
            credential=credential,
            disable_logging=True,
            disable_metrics=True,
            enable_live_metrics=False,
            enable_performance_counters=False,
            instrumentation_options={
                name: {"enabled": False}
                for name in ("django", "flask", "psycopg2", "fastapi", "requests", "urllib", "urllib3")
            },
        )
    except Exception as error:
        log.warning("dependency telemetry is off: %s", type(error).__name__)
    finally:
        configured.set()
