"""
Session detection: recognising which calls belong to one conversation from
the message history they carry.  See docs/sessions.md for the rules.
"""
