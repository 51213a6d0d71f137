"""Signed JWTs from clients and platforms: where their public keys come from, and checking them."""
