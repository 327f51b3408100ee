"""Activities: every step that touches a host or a record."""
