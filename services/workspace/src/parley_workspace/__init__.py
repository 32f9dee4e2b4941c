"""Parley workspace service: organizations, spaces, users, roles, teams, tokens, business hours."""
