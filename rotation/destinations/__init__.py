"""Delivery of a rotated secret to Key Vault, App Configuration and Azure DevOps variable groups.

The secret-rotation resource calls `check_destinations` (no network) and `validate_all` on create
and PATCH, a `Delivery`'s `deliver_all` before a new secret becomes current, and its `recheck` from
the timer. See
docs/ARCHITECTURE.md, "Destinations".
"""

from rotation.destinations.access import Access, AzureAccess, DevOpsAccess, Held, SecretToDeliver
from rotation.destinations.delivery import AccessFor, Delivery, Recheck, validate_all
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
    "Delivery",
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
    "destination_id",
    "validate_all",
]
