"""Shared internals of the visiontel distributions. Not a public API: names and
signatures change with the distributions that use them."""
