"""Built-in parts. Every module under this package is imported by the registry's discovery."""
