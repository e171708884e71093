"""Who is calling: API keys, principals, roles."""
