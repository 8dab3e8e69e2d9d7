"""Delivery of a rotated secret to Key Vault, App Configuration and Azure DevOps variable groups.

The secret-rotation resource calls `check_destinations` (no network) and `validate_all` on create
and PATCH, `deliver_all` before a new secret becomes current, and `recheck` from its timer. See
docs/ARCHITECTURE.md, "Destinations".
"""

from rotation.destinations.access import Access, AzureAccess, DevOpsAccess, Held, SecretToDeliver
from rotation.destinations.delivery import AccessFor, Recheck, deliver_all, recheck, validate_all
from rotation.destinations.models import (
    AppConfigurationDestination,
    Destination,
    DestinationList,
    DestinationState,
    DevOpsVariableGroupDestination,
    KeyVaultDestination,
    check_destinations,
    destination_id,
)

__all__ = [
    "Access",
    "AccessFor",
    "AppConfigurationDestination",
    "AzureAccess",
    "Destination",
    "DestinationList",
    "DestinationState",
    "DevOpsAccess",
    "DevOpsVariableGroupDestination",
    "Held",
    "KeyVaultDestination",
    "Recheck",
    "SecretToDeliver",
    "check_destinations",
    "deliver_all",
    "destination_id",
    "recheck",
    "validate_all",
]
