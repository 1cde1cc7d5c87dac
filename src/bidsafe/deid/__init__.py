"""deid stage."""
