"""An example third-party scorelift plugin (see docs/plugins.md in the scorelift repository)."""
