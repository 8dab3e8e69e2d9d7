"""The credential inventory: expiring app credentials of every Azure Client Secrets connection's tenant."""
