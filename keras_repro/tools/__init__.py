"""Tools around a fit: audit and bisect, preflight, the demo, child processes, the launcher and scripts."""
