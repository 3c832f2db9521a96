"""The `bitmesh` command."""
