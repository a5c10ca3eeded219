"""Analyses of teacher pools that feed figures (not methods: they train nothing)."""
