"""deface stage."""
