"""What crosses the site <-> coordinator boundary: one declared, typed schema (``protocol``)."""
