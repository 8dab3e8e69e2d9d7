"""Entra ID dynamic secrets, their leases, the expiry sweeper and the reconciler."""
