"""Automatic rotation of a Client Secret connection's own secret: schedules and the rotator."""
