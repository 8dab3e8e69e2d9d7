"""What the domain packages share: settings, storage, secrets, Azure clients, auth, audit, errors, clock."""
