"""
The live view: a browser page and a JSON API over the trace directory, with
calls in flight pushed live (``docs/ui.md``).
"""
