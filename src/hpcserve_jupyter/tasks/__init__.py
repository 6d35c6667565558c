"""Example task programs that task recipes run (see recipes/embed-files.yaml)."""
