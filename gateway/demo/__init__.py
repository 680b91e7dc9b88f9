"""`gateway demo` and the example jobs it posts."""
