"""Serializers and direct transports as worker functions (filled in by the transport work)."""
