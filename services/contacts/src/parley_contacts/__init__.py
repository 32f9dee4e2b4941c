"""Parley contacts service: the people who write in, their channel identities, fields, tags and views."""
