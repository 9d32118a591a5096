"""A scorelift guidance package written to the plugin docs of 2026-11-29."""
